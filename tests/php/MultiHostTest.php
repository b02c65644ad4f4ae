<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

/**
 * Several archiving servers on one machine, each in its own host and pid namespace
 * (`unshare --uts --pid --fork --mount-proc`): real distinct host names, pid spaces where one
 * server cannot see another's processes, and a power loss that kills a whole server at once.
 */
final class MultiHostTest extends SimulatedServersTestCase
{
    public function testServer2LosesPowerAndOnlyItsRowsAreReleasedOnceItsHeartbeatsAreStale(): void
    {
        $ids = $this->queue(array_map(fn ($i) => ['idsite' => $i], range(1, 9)));
        $rows = ['server1' => array_slice($ids, 0, 3), 'server2' => array_slice($ids, 3, 3), 'server3' => array_slice($ids, 6, 3)];
        foreach ($rows as $name => $mine) {
            $server = $this->server($name);
            $this->assertSame($name, $server->send(['cmd' => 'identity'])['host']);
            $this->assertSame(1, $server->send(['cmd' => 'identity'])['pid'], 'the agent is pid 1 of its server');
            $this->assertSame($mine, $server->send(['cmd' => 'claim', 'ids' => $mine])['won']);
        }

        $this->servers['server2']->killWhole();
        $killedAt = microtime(true);
        unset($this->servers['server2']);

        // At once: server2's heartbeats are still fresh, and nothing proves its death yet.
        $early = self::byId($this->servers['server1']->send(['cmd' => 'reap']));
        foreach ($rows['server2'] as $id) {
            $this->assertSame(['alive', 'heartbeat_fresh', 'kept'], [$early[$id]['verdict'], $early[$id]['reason'], $early[$id]['action']]);
        }

        // Within the lease (3 s here) plus a beat, server1 proves it and releases exactly its rows.
        $entry = $this->reapUntilReleased($this->servers['server1'], $rows['server2'][0], 10);
        $recovery = microtime(true) - $killedAt;
        $this->assertSame(['dead', 'heartbeat_stale', 'reset'], [$entry['verdict'], $entry['reason'], $entry['action']]);
        $this->assertLessThan(10, $recovery);
        foreach ($rows['server2'] as $id) {
            $this->assertSame(0, (int) $this->row($id)['status'], "server2's row $id is back in the queue");
        }
        foreach (['server1', 'server3'] as $name) {
            foreach ($rows[$name] as $id) {
                $row = $this->row($id);
                $this->assertSame(1, (int) $row['status'], "$name keeps row $id");
                $this->assertSame($name, $row['processing_host']);
                $this->assertSame('1', $row['process_id']);
            }
        }
    }

    /**
     * Between two core:archive runs nobody watches: `archive-claim watch`, the fleet's long-lived
     * watcher, releases a server that lost power meanwhile within a lease and a beat, with nobody
     * running a command, and says so.
     */
    public function testTheWatchCommandReleasesAServerThatDiedBetweenRuns(): void
    {
        [$held, $other] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $server = $this->server('between-runs');
        $this->assertSame([$held], $server->send(['cmd' => 'claim', 'ids' => [$held]])['won']);
        $c = $this->config;
        $env = ['PATH' => getenv('PATH'), 'MATOMO_DB_HOST' => $c['host'], 'MATOMO_DB_PORT' => $c['port'], 'MATOMO_DB_USER' => $c['username'],
            'MATOMO_DB_PASSWORD' => $c['password'], 'MATOMO_DB_NAME' => $c['dbname'], 'MATOMO_DB_PREFIX' => $c['tables_prefix']];
        $cmd = TestDatabase::php(['-d', 'matomo_archive_claim.heartbeat_interval=1', '-d', 'matomo_archive_claim.lease=3',
            '-d', 'matomo_archive_claim.auto_reap=1', __DIR__ . '/../../php/bin/archive-claim', 'watch']);
        $out = tempnam(sys_get_temp_dir(), 'watch');
        $watch = proc_open($cmd, [1 => ['file', $out, 'w'], 2 => ['file', $out, 'a']], $pipes, null, $env);
        try {
            sleep(4); // a lease of watching: the fleet's reaper duty is its from then on
            $server->killWhole();
            unset($this->servers['between-runs']);
            $killed = microtime(true);
            while ((int) $this->row($held)['status'] === 1 && microtime(true) - $killed < 15) {
                usleep(200000);
            }
            $recovery = microtime(true) - $killed;
            $this->assertSame(0, (int) $this->row($held)['status'], "not released within 15 s:\n" . file_get_contents($out));
            $this->assertLessThan(15, $recovery);
            $this->assertSame(0, (int) $this->row($other)['status'], 'a queued row is left alone');
            usleep(1500000); // the loop prints what its thread released at its next turn
            $this->assertMatchesRegularExpression("/released #$held \\(site 1, .* of between-runs pid 1: dead\\/heartbeat_stale, reset/", (string) file_get_contents($out));
            fwrite(STDERR, sprintf("\narchive-claim watch: a server that lost power was released %.1f s later (lease 3 s)\n", $recovery));
        } finally {
            proc_terminate($watch, SIGTERM);
            proc_close($watch);
            @unlink($out);
        }
    }

    public function testAProcessKilledInsideAServerIsReapedAtOnceByThatServer(): void
    {
        [$id] = $this->queue([[]]);
        $server = $this->server('server1');
        $server->send(['cmd' => 'identity']);
        $victim = $server->send(['cmd' => 'spawn', 'ids' => [$id]]);
        $this->assertLessThan(100, $victim['pid'], 'a pid of the server namespace');
        $server->send(['cmd' => 'kill', 'pid' => $victim['pid']]);

        $entry = self::byId($server->send(['cmd' => 'reap']))[$id];
        $this->assertSame(['dead', 'pid_gone', 'reset'], [$entry['verdict'], $entry['reason'], $entry['action']]);
    }

    public function testTheFleetsReaperReleasesAPoweredOffServersRowsWithNobodyRunningACommand(): void
    {
        // No index on status here: the reaper looks once per lease, not every beat.
        [$survivor, $victim] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $ini = ['heartbeat_interval' => 1, 'lease' => 3, 'auto_reap' => 1];
        $this->server('server1', $ini)->send(['cmd' => 'claim', 'ids' => [$survivor]]);
        $this->server('server2', $ini)->send(['cmd' => 'claim', 'ids' => [$victim]]);
        $this->servers['server2']->killWhole();
        unset($this->servers['server2']);
        $killed = microtime(true);
        while ((int) $this->row($victim)['status'] !== 0 && microtime(true) - $killed < 20) {
            usleep(100000);
        }
        $this->assertSame(0, (int) $this->row($victim)['status'], 'released by server1\'s heartbeat thread');
        $this->assertSame(1, (int) $this->row($survivor)['status']);
    }

    public function testTheHostsReaperLearnsOfALocalDeathFromTheKernelNotAtItsNextLook(): void
    {
        // Beats every 30 s: a periodic look could not see this death for half a minute.
        [$id, $own] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $server = $this->server('server1', ['heartbeat_interval' => 30, 'lease' => 90, 'auto_reap' => 1]);
        $this->assertSame([$own], $server->send(['cmd' => 'claim', 'ids' => [$own]])['won'], 'the agent: this host\'s reaper');
        $victim = $server->send(['cmd' => 'spawn', 'ids' => [$id]]);
        sleep(2); // the reaper reads which local processes to watch every second
        $server->send(['cmd' => 'kill', 'pid' => $victim['pid']]);
        $killed = microtime(true);
        while ((int) $this->row($id)['status'] !== 0 && microtime(true) - $killed < 15) {
            usleep(20000);
        }
        $this->assertSame(0, (int) $this->row($id)['status'], 'released by the reaper thread, woken by the kernel');
        $this->assertLessThan(15, microtime(true) - $killed);
        $this->assertSame(1, (int) $this->row($own)['status'], 'the live reaper keeps its own claim');
    }

    public function testAHostThatBeatsLessOftenIsJudgedByItsOwnLeaseNotTheReapers(): void
    {
        // server1 beats every 30 s (lease 90). A reaper whose lease is 3 s (its php.ini, or the
        // 'lease' option) reads server1's heartbeat of 5 s ago: that is no silence for server1,
        // whose claims stay alive until a beat of its own is overdue.
        [$id] = $this->queue([[]]);
        $server1 = $this->server('server1', ['heartbeat_interval' => 30, 'lease' => 90, 'auto_reap' => 1]);
        $this->assertSame([$id], $server1->send(['cmd' => 'claim', 'ids' => [$id]])['won']);
        $server2 = $this->server('server2', ['heartbeat_interval' => 1, 'lease' => 3, 'auto_reap' => 0]);
        $server2->send(['cmd' => 'identity']);
        sleep(5);

        foreach ([[], ['lease' => 1]] as $options) {
            $entry = self::byId($server2->send(['cmd' => 'reap', 'options' => $options]))[$id];
            $this->assertSame(['alive', 'heartbeat_fresh', 'kept'], [$entry['verdict'], $entry['reason'], $entry['action']], json_encode($options));
        }
        $this->assertSame(1, (int) $this->row($id)['status']);
        $this->assertSame('server1', $this->row($id)['processing_host']);
    }

    public function testAPidReusedInANewPidNamespaceIsProofOfDeathOnceNoTimeZoneCanExplainIt(): void
    {
        // A stock Matomo archiver on "reuse-host" claimed as pid 1 and died; the server
        // rebooted its namespace and pid 1 is now a process that started later. The claim's
        // ts_started is a DATETIME in a session time zone we cannot know: an hour later proves
        // nothing (a SET GLOBAL time_zone could explain it), more than any zone spread does.
        [$recent, $old] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $this->claimAs($recent, 'reuse-host', '1', 'NOW() - INTERVAL 1 HOUR');
        $this->claimAs($old, 'reuse-host', '1', 'NOW() - INTERVAL 27 HOUR');
        $server = $this->server('reuse-host');
        $this->assertSame(1, $server->send(['cmd' => 'identity'])['pid']);

        $entries = self::byId($server->send(['cmd' => 'reap', 'options' => ['timeout' => 200000]]));
        $this->assertSame(['alive', 'pid_alive', 'kept'], [$entries[$recent]['verdict'], $entries[$recent]['reason'], $entries[$recent]['action']]);
        $this->assertSame(['dead', 'pid_reused', 'reset'], [$entries[$old]['verdict'], $entries[$old]['reason'], $entries[$old]['action']]);
    }

    public function testARegisteredOwnerWhosePidWentToALaterProcessIsDeadAtOnce(): void
    {
        // An archiver that loaded the extension (registered: its start ticks are on record)
        // claims and is killed; its pid then goes to a later process of the same host and pid
        // namespace, which claims nothing. The registration's start ticks differ from the
        // process now holding the pid: the owner is dead (pid reused), provable by this host's
        // reaper at once, not after 26 hours.
        [$id] = $this->queue([[]]);
        $server = $this->server('reuse-host');
        $owner = $server->send(['cmd' => 'spawn', 'ids' => [$id], 'register' => true]);
        $this->assertSame([$id], $owner['won']);
        $server->send(['cmd' => 'kill', 'pid' => $owner['pid']]);
        sleep(3); // the later process starts after the claim by more than a 2 s clock margin
        $later = $server->send(['cmd' => 'spawn', 'ids' => [], 'extension' => false, 'pid' => $owner['pid']]);
        $this->assertSame($owner['pid'], $later['pid'], 'ns_last_pid gave the later process the dead owner\'s pid');

        $deadline = microtime(true) + 5;
        do {
            $entry = self::byId($server->send(['cmd' => 'reap']))[$id];
            if ($entry['action'] !== 'kept') {
                break;
            }
            usleep(250000);
        } while (microtime(true) < $deadline);
        $this->assertSame(['dead', 'pid_reused', 'reset'], [$entry['verdict'], $entry['reason'], $entry['action']],
            'the registered owner whose pid now names a later process is dead');
        $this->assertSame(0, (int) $this->row($id)['status']);
    }

    public function testAStockMatomoClaimerIsJudgedOnlyOnItsOwnHost(): void
    {
        [$id] = $this->queue([[]]);
        $server1 = $this->server('server1');
        $server2 = $this->server('server2');
        $stock = $server2->send(['cmd' => 'spawn', 'ids' => [$id], 'extension' => false]);
        $this->assertSame('server2', $this->row($id)['processing_host']);

        $alive = self::byId($server2->send(['cmd' => 'reap']))[$id];
        $this->assertSame(['alive', 'pid_alive', 'kept'], [$alive['verdict'], $alive['reason'], $alive['action']]);
        $server2->send(['cmd' => 'kill', 'pid' => $stock['pid']]);

        $remote = self::byId($server1->send(['cmd' => 'reap']))[$id];
        $this->assertSame(['unknown', 'remote_unregistered', 'kept'], [$remote['verdict'], $remote['reason'], $remote['action']],
            'server1 cannot see server2\'s processes');
        $local = self::byId($server2->send(['cmd' => 'reap']))[$id];
        $this->assertSame(['dead', 'pid_gone', 'reset'], [$local['verdict'], $local['reason'], $local['action']]);
    }

    public function testAStockMatomoClaimOnADeadServerIsReleasedByTheTimeoutFromElsewhere(): void
    {
        [$id] = $this->queue([[]]);
        $this->claimAs($id, 'server2', '345', 'NOW() - INTERVAL 25 HOUR');
        $entry = self::byId($this->server('server1')->send(['cmd' => 'reap']))[$id];
        $this->assertSame(['dead', 'timeout', 'reset'], [$entry['verdict'], $entry['reason'], $entry['action']]);
    }

    public function testAnOperatorCanDeclareADeadServerBeforeItsLeaseRunsOut(): void
    {
        [$id] = $this->queue([[]]);
        $server2 = $this->server('server2', ['lease' => 600]);
        $server2->send(['cmd' => 'claim', 'ids' => [$id]]);
        $server2->killWhole();
        unset($this->servers['server2']);

        // Its heartbeat is still fresh for ten minutes: without force the declaration is refused.
        $server1 = $this->server('server1', ['lease' => 600]);
        try {
            $server1->send(['cmd' => 'reap', 'options' => ['declare_hosts_dead' => ['server2']]]);
            $this->fail('a host with a fresh heartbeat was declared dead without force');
        } catch (\RuntimeException $e) {
            $this->assertStringContainsString('RefusedException', $e->getMessage());
        }
        $entry = self::byId($server1->send(['cmd' => 'reap', 'options' => ['declare_hosts_dead' => ['server2'], 'force' => true]]))[$id];
        $this->assertSame(['dead', 'host_declared_dead', 'reset'], [$entry['verdict'], $entry['reason'], $entry['action']]);
    }
}
