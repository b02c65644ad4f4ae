<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use function Matomo\ArchiveClaim\claim_invalidation;
use function Matomo\ArchiveClaim\in_progress;
use function Matomo\ArchiveClaim\reap_orphans;

/**
 * reap_orphans() on one host: this PHPUnit process is the reaper, processes started through a
 * server agent (same host, same pids) are the owners that live or die.
 */
final class ReapTest extends ExtensionTestCase
{
    private ?SimulatedServer $server = null;

    protected function tearDown(): void
    {
        $this->server?->stop();
        parent::tearDown();
    }

    private function sameHost(array $ini = []): SimulatedServer
    {
        return $this->server = SimulatedServer::start('same-host', $this->config, $ini, false);
    }

    public function testAProcessKilledWithSigkillIsReapedAtOnceOnItsHost(): void
    {
        $ids = $this->queue([['idsite' => 1], ['idsite' => 2], ['idsite' => 3]]);
        $server = $this->sameHost();
        $claimer = $server->send(['cmd' => 'spawn', 'ids' => $ids]);
        $this->assertSame($ids, $claimer['won']);

        $alive = self::byId(reap_orphans());
        foreach ($ids as $id) {
            $this->assertSame(['alive', 'heartbeat_fresh', 'kept'],
                [$alive[$id]['verdict'], $alive[$id]['reason'], $alive[$id]['action']]);
        }

        $server->send(['cmd' => 'kill', 'pid' => $claimer['pid']]);
        $report = reap_orphans();
        $this->assertSame(3, $report['released']);
        foreach (self::byId($report) as $id => $entry) {
            $this->assertSame(['dead', 'pid_gone', 'reset'], [$entry['verdict'], $entry['reason'], $entry['action']]);
            $this->assertSame((string) $claimer['pid'], $entry['process_id']);
            $row = $this->row($id);
            $this->assertSame(0, (int) $row['status']);
            $this->assertNull($row['processing_host']);
        }
    }

    public function testAStockMatomoClaimerIsKeptWhileItRunsAndReapedWhenItDies(): void
    {
        $ids = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $server = $this->sameHost();
        $stock = $server->send(['cmd' => 'spawn', 'ids' => $ids, 'extension' => false]);
        $this->assertSame($ids, $stock['won']);

        foreach (self::byId(reap_orphans()) as $entry) {
            $this->assertSame(['alive', 'pid_alive', 'kept'], [$entry['verdict'], $entry['reason'], $entry['action']]);
        }
        $server->send(['cmd' => 'kill', 'pid' => $stock['pid']]);
        $report = reap_orphans();
        $this->assertSame(2, $report['reset']);
        $this->assertSame(['pid_gone', 'pid_gone'], array_column($report['rows'], 'reason'));
    }

    public function testAnUnregisteredClaimOnAnotherHostWaitsForTheTimeout(): void
    {
        [$a, $b] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $this->claimAs($a, 'server-elsewhere', '4242', 'NOW() - INTERVAL 2 HOUR');
        $this->claimAs($b, 'server-elsewhere', '4243', 'NOW() - INTERVAL 2 HOUR');

        $kept = self::byId(reap_orphans());
        $this->assertSame(['unknown', 'remote_unregistered', 'kept'], [$kept[$a]['verdict'], $kept[$a]['reason'], $kept[$a]['action']]);
        $this->assertEqualsWithDelta(7200, $kept[$a]['age_seconds'], 2);

        // Matomo's backstop with a per-site override: site 2 waits 3 hours, the rest 1 hour.
        $report = self::byId(reap_orphans(['timeout' => 3600, 'site_timeouts' => [2 => 10800]]));
        $this->assertSame(['dead', 'timeout', 'reset'], [$report[$a]['verdict'], $report[$a]['reason'], $report[$a]['action']]);
        $this->assertSame('kept', $report[$b]['action']);
        $this->assertSame(0, (int) $this->row($a)['status']);
        $this->assertSame(1, (int) $this->row($b)['status']);
    }

    public function testRowsNeverStartedAreLeftAloneAsMatomoDoes(): void
    {
        [$id] = $this->queue([[]]);
        $this->pdo->exec("UPDATE {$this->table()} SET status = 1, processing_host = 'x', process_id = '1' WHERE idinvalidation = $id");
        $entry = self::byId(reap_orphans(['timeout' => 1, 'declare_hosts_dead' => ['x']]))[$id];
        $this->assertSame(['never_started', 'kept'], [$entry['reason'], $entry['action']]);
        $this->assertSame(1, (int) $this->row($id)['status']);
    }

    public function testADeadOwnersRowWithAQueuedTwinIsDeletedAsMatomoDoes(): void
    {
        [$orphan, $twin, $single] = $this->queue([['idsite' => 5], ['idsite' => 5], ['idsite' => 6]]);
        $gone = (string) $this->goneLocalPid();
        $this->claimAs($orphan, gethostname(), $gone);
        $this->claimAs($single, gethostname(), $gone);

        $report = self::byId(reap_orphans());
        $this->assertSame('deleted_duplicate', $report[$orphan]['action']);
        $this->assertSame('reset', $report[$single]['action']);
        $this->assertNull($this->row($orphan));
        $this->assertSame(0, (int) $this->row($twin)['status']);
    }

    public function testOrphansOfOneArchiveAreSettledInIdOrderAndTheDryRunSaysSoFirst(): void
    {
        // Three orphans of one archive, as Matomo's row-by-row release would go: the first is a
        // duplicate of the second (in progress, started after the first was invalidated); the
        // second sees the first gone and the third claimed before it was invalidated, so it goes
        // back to the queue; the third then has a queued twin. A fourth row (another report)
        // is alone. All were claimed at 11:00.
        $ids = $this->queue([
            ['idsite' => 7, 'ts_invalidated' => '2026-11-28 10:00:00'],
            ['idsite' => 7, 'ts_invalidated' => '2026-11-28 12:00:00'],
            ['idsite' => 7, 'ts_invalidated' => '2026-11-28 12:00:00'],
            ['idsite' => 7, 'report' => 'Goals'],
        ]);
        $gone = (string) $this->goneLocalPid();
        foreach ($ids as $id) {
            $this->claimAs($id, gethostname(), $gone, "'2026-11-28 11:00:00'");
        }

        $checksum = $this->tableChecksum();
        $planned = self::byId(reap_orphans(['dry_run' => true, 'timeout' => 1]));
        $this->assertSame($checksum, $this->tableChecksum());
        $report = self::byId(reap_orphans(['timeout' => 1]));
        $expected = ['deleted_duplicate', 'reset', 'deleted_duplicate', 'reset'];
        $this->assertSame($expected, array_map(fn ($id) => $report[$id]['action'], $ids));
        $this->assertSame(
            array_map(fn ($a) => $a === 'reset' ? 'would_reset' : 'would_delete', $expected),
            array_map(fn ($id) => $planned[$id]['action'], $ids),
        );
        $this->assertNull($this->row($ids[0]));
        $this->assertSame(0, (int) $this->row($ids[1])['status']);
        $this->assertNull($this->row($ids[2]));
        $this->assertNull($this->row($ids[3])['ts_started']);
    }

    public function testADryRunDecidesReportsAndChangesNothing(): void
    {
        [$orphan, , $single] = $this->queue([['idsite' => 5], ['idsite' => 5], ['idsite' => 6]]);
        $gone = (string) $this->goneLocalPid();
        $this->claimAs($orphan, gethostname(), $gone);
        $this->claimAs($single, gethostname(), $gone);
        $checksum = $this->tableChecksum();

        $report = reap_orphans(['dry_run' => true]);
        $this->assertTrue($report['dry_run']);
        $this->assertSame(0, $report['released']);
        $this->assertSame([1, 1], [$report['would_delete'], $report['would_reset']]);
        $this->assertSame($checksum, $this->tableChecksum());
    }

    public function testADeclaredDeadHostThatStillHeartbeatsIsRefusedUnlessForced(): void
    {
        [$id] = $this->queue([[]]);
        $server = $this->sameHost();
        $this->assertSame([$id], $server->send(['cmd' => 'claim', 'ids' => [$id]])['won']);
        $checksum = $this->tableChecksum();
        try {
            reap_orphans(['declare_hosts_dead' => [gethostname()]]);
            $this->fail('released the rows of a live host');
        } catch (\Matomo\ArchiveClaim\RefusedException $e) {
            $this->assertInstanceOf(\Matomo\ArchiveClaim\Exception::class, $e);
            $this->assertStringContainsString('is alive', $e->getMessage());
            $this->assertStringContainsString('force', $e->getMessage());
        }
        $this->assertSame($checksum, $this->tableChecksum());

        $entry = self::byId(reap_orphans(['declare_hosts_dead' => [gethostname()], 'force' => true]))[$id];
        $this->assertSame(['dead', 'host_declared_dead', 'reset'], [$entry['verdict'], $entry['reason'], $entry['action']]);
    }

    /** in_progress(['hosts' => ...]) filters; the same key here once declared those hosts dead. */
    public function testTheOldNameOfDeclareHostsDeadIsRefusedNamingTheNewOneAndReleasesNothing(): void
    {
        [$id] = $this->queue([[]]);
        $this->claimAs($id, 'server2', '4242');
        $checksum = $this->tableChecksum();
        try {
            reap_orphans(['hosts' => ['server2'], 'force' => true]);
            $this->fail("'hosts' was accepted");
        } catch (\ValueError $e) {
            $this->assertStringContainsString("'declare_hosts_dead'", $e->getMessage());
            $this->assertStringContainsString("'only_hosts'", $e->getMessage());
        }
        $this->assertSame($checksum, $this->tableChecksum());
    }

    public function testAStaleOwnerCannotUndoTheClaimThatFollowedTheReap(): void
    {
        [$id] = $this->queue([[]]);
        $server = $this->sameHost();
        $server->send(['cmd' => 'claim', 'ids' => [$id]]);
        reap_orphans(['declare_hosts_dead' => [gethostname()], 'force' => true]);
        $this->assertTrue(claim_invalidation($id), 'the reaped row is claimable again');
        $ours = $this->row($id);

        $this->assertSame(0, $server->send(['cmd' => 'complete', 'ids' => [$id]])['changed']);
        $this->assertSame(0, $server->send(['cmd' => 'release', 'ids' => [$id]])['changed']);
        $this->assertSame($ours, $this->row($id));
    }

    public function testTheReportDescribesEveryRowLookedAt(): void
    {
        [$id] = $this->queue([['idsite' => 4, 'report' => 'Goals']]);
        $this->claimAs($id, 'elsewhere', '12');
        $report = reap_orphans(['idsites' => [4]]);
        $this->assertSame(['dry_run', 'examined', 'released', 'reset', 'deleted_duplicate', 'kept', 'lost_race',
            'would_reset', 'would_delete', 'rows', 'forgotten_registrations'], array_keys($report));
        $this->assertSame(1, $report['examined']);
        // A kept row shows what it was decided on; a released one all of Matomo's columns too
        // (the rest is read for the released rows only: a reap's read stays within the index).
        $decided = ['idinvalidation', 'idsite', 'date1', 'date2', 'period', 'ts_started', 'status', 'processing_host', 'process_id',
            'age_seconds', 'verdict', 'reason', 'action'];
        $this->assertSame($decided, array_keys($report['rows'][0]));
        $this->assertSame('kept', $report['rows'][0]['action']);
        [$dead] = $this->queue([['idsite' => 4, 'date1' => '2026-11-20', 'date2' => '2026-11-20', 'report' => 'Goals', 'ts_invalidated' => '2026-11-28 10:00:00']]);
        $this->claimAs($dead, gethostname(), (string) $this->goneLocalPid());
        $released = self::byId(reap_orphans(['idsites' => [4]]))[$dead];
        $this->assertSame('reset', $released['action']);
        $this->assertSame([], array_diff(array_merge($decided, ['idarchive', 'name', 'report', 'ts_invalidated']), array_keys($released)));
        $this->assertSame(['done', 'Goals', '2026-11-28 10:00:00'], [$released['name'], $released['report'], $released['ts_invalidated']]);
        $this->assertSame(0, reap_orphans(['idsites' => [5]])['examined']);
    }

    public function testBadOptionsAreRefusedAndChangeNothing(): void
    {
        [$id] = $this->queue([[]]);
        $this->claimAs($id, gethostname(), (string) $this->goneLocalPid());
        $checksum = $this->tableChecksum();
        $cases = [
            [['dryrun' => true], \ValueError::class],
            [['timeout' => 0], \ValueError::class],
            [['timeout' => 'soon'], \ValueError::class],
            [['site_timeouts' => 5], \TypeError::class],
            [['site_timeouts' => ['x' => 5]], \ValueError::class],
            [['declare_hosts_dead' => 'server2'], \TypeError::class],
            [['idsites' => [-1]], \ValueError::class],
            [['dry_run' => 'yes'], \TypeError::class],
            [['lease' => 0], \ValueError::class],
        ];
        foreach ($cases as [$options, $class]) {
            try {
                reap_orphans($options);
                $this->fail('accepted ' . json_encode($options));
            } catch (\Throwable $e) {
                $this->assertInstanceOf($class, $e, json_encode($options) . ': ' . $e->getMessage());
            }
        }
        $this->assertSame($checksum, $this->tableChecksum());
    }

    public function testAutomaticReapingReleasesProvenDeathsOnlyWithoutAnyoneAsking(): void
    {
        [$held, $orphanA, $orphanB, $remote] = $this->queue([['idsite' => 1], ['idsite' => 2], ['idsite' => 3], ['idsite' => 4]]);
        $this->claimAs($remote, 'server-elsewhere', '4242', 'NOW() - INTERVAL 3 DAY');
        $server = $this->sameHost(['auto_reap' => 1, 'heartbeat_interval' => 1, 'lease' => 3]);
        $server->send(['cmd' => 'claim', 'ids' => [$held]]); // registers: its heartbeat thread reaps
        $victim = $server->send(['cmd' => 'spawn', 'ids' => [$orphanA, $orphanB]]);
        $server->send(['cmd' => 'kill', 'pid' => $victim['pid']]);

        $deadline = microtime(true) + 10;
        while ((int) $this->row($orphanA)['status'] === 1 && microtime(true) < $deadline) {
            usleep(100000);
        }
        $this->assertSame(0, (int) $this->row($orphanA)['status'], 're-queued by the heartbeat thread');
        $this->assertSame(0, (int) $this->row($orphanB)['status']);
        $this->assertSame(1, (int) $this->row($held)['status'], 'a live claim is never released');
        $this->assertSame(1, (int) $this->row($remote)['status'], 'automatic reaping never applies the timeout');
    }

    /**
     * What the heartbeat thread did is on record three ways: a line per release (row, owner,
     * reason) in the file matomo_archive_claim.log names, its counters beside its registration
     * (for the plugin's page) and in register_process()'s answer.
     */
    public function testTheHeartbeatThreadLogsEachReleaseAndCountsWhatItDid(): void
    {
        $log = sys_get_temp_dir() . '/archive-claim-thread-' . getmypid() . '.log';
        @unlink($log);
        [$held, $orphan] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $server = $this->sameHost(['auto_reap' => 1, 'heartbeat_interval' => 1, 'lease' => 3, 'log' => $log]);
        $server->send(['cmd' => 'claim', 'ids' => [$held]]);
        $victim = $server->send(['cmd' => 'spawn', 'ids' => [$orphan]]);
        $server->send(['cmd' => 'kill', 'pid' => $victim['pid']]);

        $deadline = microtime(true) + 10;
        while ((int) $this->row($orphan)['status'] === 1 && microtime(true) < $deadline) {
            usleep(100000);
        }
        $this->assertSame(0, (int) $this->row($orphan)['status'], 're-queued by the heartbeat thread');
        $me = $server->send(['cmd' => 'register']);
        // The next beat writes the counters of the release (the thread logged it before).
        $counters = fn () => $this->pdo->query("SELECT beats, reap_runs, released, errors, last_error FROM matomo_archive_claim_process
            WHERE idprocess = {$me['idprocess']}")->fetch(\PDO::FETCH_ASSOC);
        $deadline = microtime(true) + 10;
        while ((int) ($counters()['released'] ?? 0) < 1 && microtime(true) < $deadline) {
            usleep(50000);
        }
        $text = (string) @file_get_contents($log);
        @unlink($log);
        $this->assertMatchesRegularExpression("/started as process #\\d+/", $text);
        $this->assertMatchesRegularExpression("/re-queued invalidation $orphan \\(site 2, period 1, .*\\) held by "
            . preg_quote(gethostname(), '/') . " pid {$victim['pid']} for \\d+ s: dead, pid_gone/", $text);
        $this->assertStringNotContainsString("invalidation $held ", $text, 'a live claim is never released');

        $this->assertSame($log, $me['log']);
        $this->assertGreaterThanOrEqual(1, $me['released']);
        $this->assertGreaterThanOrEqual(1, $me['reap_runs']);
        $this->assertSame(0, $me['errors']);
        $row = $counters();
        $this->assertGreaterThanOrEqual(2, (int) $row['beats']);
        $this->assertGreaterThanOrEqual(1, (int) $row['reap_runs']);
        $this->assertSame(1, (int) $row['released']);
        $this->assertSame([0, null], [(int) $row['errors'], $row['last_error']]);
    }

    /**
     * Matomo reads an archiving child's output, stderr included, as its answer: a thread with no
     * log configured (neither ours nor PHP's error_log) writes nothing there, even as it releases.
     */
    public function testAThreadWithNoLogConfiguredWritesNothingToTheProcessOutput(): void
    {
        [$orphan] = $this->queue([[]]);
        $this->claimAs($orphan, gethostname(), (string) $this->goneLocalPid());
        $config = var_export($this->config, true);
        [$code, $out, $err] = $this->runPhp("Matomo\\ArchiveClaim\\configure($config);
            \$deadline = microtime(true) + 10;
            do { usleep(100000); \$me = Matomo\\ArchiveClaim\\register_process(); } while (\$me['released'] < 1 && microtime(true) < \$deadline);
            echo 'released ', \$me['released'];",
            ['matomo_archive_claim.auto_reap' => 1, 'matomo_archive_claim.heartbeat_interval' => 1,
                'matomo_archive_claim.lease' => 3, 'matomo_archive_claim.log' => '', 'error_log' => '', 'log_errors' => 1]);
        $this->assertSame([0, 'released 1', ''], [$code, $out, $err]);
        $this->assertSame(0, (int) $this->row($orphan)['status'], 're-queued by the thread');
    }

    /** A registry made before the counter columns costs no beat: they are simply not written. */
    public function testARegistryWithoutTheCounterColumnsStillHeartbeats(): void
    {
        \Matomo\ArchiveClaim\install_schema();
        $this->pdo->exec('ALTER TABLE matomo_archive_claim_process DROP COLUMN beats, DROP COLUMN reap_runs,
            DROP COLUMN released, DROP COLUMN errors, DROP COLUMN last_error');
        [$id] = $this->queue([[]]);
        $server = $this->sameHost();
        $server->send(['cmd' => 'claim', 'ids' => [$id]]);
        $pid = (int) $this->row($id)['process_id'];
        $beat = fn () => (float) $this->pdo->query("SELECT heartbeat_at FROM matomo_archive_claim_process WHERE pid = $pid")->fetchColumn();
        $first = $beat();
        $deadline = microtime(true) + 10;
        while ($beat() <= $first && microtime(true) < $deadline) {
            usleep(50000);
        }
        $this->assertGreaterThan($first, $beat(), 'the heartbeat moved on');
        $this->assertSame(0, $server->send(['cmd' => 'register'])['errors']);
    }

    public function testARegistrationHeartbeatsAndACleanExitRemovesIt(): void
    {
        [$id] = $this->queue([[]]);
        $server = $this->sameHost();
        $server->send(['cmd' => 'claim', 'ids' => [$id]]);
        $pid = (int) $this->row($id)['process_id'];
        $registry = fn () => $this->pdo->query("SELECT pid, host, boot_id, heartbeat_at FROM `matomo_archive_claim_process` WHERE pid = $pid")->fetchAll(\PDO::FETCH_ASSOC);

        $first = $registry();
        $this->assertCount(1, $first);
        $this->assertSame(gethostname(), $first[0]['host']);
        $deadline = microtime(true) + 10;
        while ($registry()[0]['heartbeat_at'] <= $first[0]['heartbeat_at'] && microtime(true) < $deadline) {
            usleep(50000);
        }
        $this->assertGreaterThan($first[0]['heartbeat_at'], $registry()[0]['heartbeat_at'], 'the heartbeat moved on');

        $server->stop();
        $this->assertSame([], $registry(), 'a clean exit unregisters');
        $this->server = null;
    }

    public function testSigkillLeavesTheRegistrationToGoStale(): void
    {
        [$id] = $this->queue([[]]);
        $server = $this->sameHost();
        $server->send(['cmd' => 'claim', 'ids' => [$id]]);
        $server->killWhole();
        $this->server = null;
        $count = $this->pdo->query('SELECT COUNT(*) FROM `matomo_archive_claim_process`')->fetchColumn();
        $this->assertSame(1, (int) $count);
    }

    /**
     * The operator's load charts count as released what a reaper gave back for a dead owner, on
     * the dead owner's host and in the minute of the release: a server that died shows its work
     * going back. A dry run records nothing.
     */
    public function testReapedRowsCountAsReleasedOnTheDeadOwnersHostInTheLoadHistory(): void
    {
        [$a, $b, $remote] = $this->queue([['idsite' => 1], ['idsite' => 2], ['idsite' => 3]]);
        $server = $this->sameHost();
        $claimer = $server->send(['cmd' => 'spawn', 'ids' => [$a, $b]]);
        $this->claimAs($remote, 'server-gone', '4242');
        $server->send(['cmd' => 'kill', 'pid' => $claimer['pid']]);
        $released = function (): array {
            if (!$this->pdo->query("SHOW TABLES LIKE 'matomo_archive_claim_load'")->fetchColumn()) {
                return [];
            }
            return array_map('intval', $this->pdo->query('SELECT host, SUM(released) FROM matomo_archive_claim_load
                WHERE released > 0 GROUP BY host ORDER BY host')->fetchAll(\PDO::FETCH_KEY_PAIR));
        };

        $this->assertSame(3, reap_orphans(['dry_run' => true, 'declare_hosts_dead' => ['server-gone']])['would_reset']);
        $this->assertSame([], $released(), 'a dry run records nothing');

        $from = intdiv(time(), 60) * 60;
        $this->assertSame(3, reap_orphans(['declare_hosts_dead' => ['server-gone']])['released']);
        $to = time();
        $expected = [gethostname() => 2, 'server-gone' => 1];
        ksort($expected);
        $this->assertSame($expected, $released());
        $minutes = $this->pdo->query('SELECT DISTINCT minute FROM matomo_archive_claim_load WHERE released > 0')->fetchAll(\PDO::FETCH_COLUMN);
        foreach ($minutes as $minute) {
            $this->assertGreaterThanOrEqual($from, (int) $minute);
            $this->assertLessThanOrEqual($to, (int) $minute);
        }
        $this->assertSame([], array_filter(array_map(fn ($id) => (int) $this->row($id)['status'], [$a, $b, $remote])), 'all three back in the queue');
    }

    /** @return array<string, array{bool}> whether the unregistered archiving child registers (or dies) */
    public static function unregisteredChildEnds(): array
    {
        return ['it registers, working for another process' => [true], 'it dies before registering' => [false]];
    }

    /**
     * A batch-of-one archiving child (climulti:request, no runid=) that has not registered yet
     * may be working for a dead owner on this host: the owner's rows wait for it
     * (unknown/unregistered_child). Nothing wakes the heartbeat thread when such a child
     * registers, so the rows are looked at again an interval later, not a lease later (30 s
     * here); a child that dies first wakes the thread at its death.
     *
     * @dataProvider unregisteredChildEnds
     */
    public function testRowsWaitingForAnArchivingChildToRegisterComeBackMomentsAfterItRegistersOrDies(bool $registers): void
    {
        [$held, $orphan] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        // Matomo takes a moment to boot before the plugin registers a child: this one registers
        // when told (a line on its stdin) or never.
        $code = 'Matomo\ArchiveClaim\configure(json_decode($argv[1], true)); if (fgets(STDIN) === "register\n") {'
            . ' Matomo\ArchiveClaim\register_process(); echo "registered\n"; } sleep(120);';
        $child = proc_open(TestDatabase::php(['-r', $code, json_encode($this->config), 'climulti:request']),
            [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['file', '/dev/null', 'w']], $pipes);
        $childPid = proc_get_status($child)['pid'];
        try {
            $server = $this->sameHost(['auto_reap' => 1, 'heartbeat_interval' => 1, 'lease' => 30]);
            $server->send(['cmd' => 'claim', 'ids' => [$held]]);
            $victim = $server->send(['cmd' => 'spawn', 'ids' => [$orphan]]);
            $server->send(['cmd' => 'kill', 'pid' => $victim['pid']]);

            $reason = fn () => array_column(in_progress(), 'reason', 'idinvalidation')[$orphan] ?? null;
            $this->assertSame('unregistered_child', $reason(), 'the dead owner\'s row waits for the unregistered child');
            sleep(2); // the heartbeat thread looked meanwhile (at the death) and kept it
            $this->assertSame(1, (int) $this->row($orphan)['status'], 'kept while the child is unregistered');

            $t = microtime(true);
            if ($registers) {
                fwrite($pipes[0], "register\n");
                $this->assertSame("registered\n", fgets($pipes[1]));
            } else {
                posix_kill($childPid, SIGKILL);
            }
            $deadline = microtime(true) + 10;
            while ((int) $this->row($orphan)['status'] === 1 && microtime(true) < $deadline) {
                usleep(50000);
            }
            $this->assertSame(0, (int) $this->row($orphan)['status'],
                're-queued by the heartbeat thread within an interval or two, not at its next look a lease (30 s) later');
            $this->assertLessThan(10.0, microtime(true) - $t);
            $this->assertSame(1, (int) $this->row($held)['status'], 'a live claim is never released');
        } finally {
            posix_kill($childPid, SIGKILL);
            foreach ($pipes as $pipe) {
                fclose($pipe);
            }
            proc_close($child);
        }
    }
}
