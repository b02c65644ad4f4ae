<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

/**
 * "A live claim is never released": each way it once was, tried again on servers in their own
 * host and pid namespaces. Every test holds a live claim against a reaper that would have
 * released it before (a time-zone change, a clock step, a heartbeat that cannot connect, a pid
 * reused after a registered owner died, one host name in two pid namespaces, work running in a
 * child), and checks that a real death is still recovered.
 */
final class LiveClaimHazardsTest extends SimulatedServersTestCase
{
    protected function tearDown(): void
    {
        parent::tearDown();
        TestDatabase::admin()->exec("SET GLOBAL time_zone = 'SYSTEM'");
    }

    public function testAChangeOfTheDatabaseTimeZoneReleasesNoLiveClaim(): void
    {
        [$id, $second] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $archiver = $this->server('archiver', [], 'tz-archiver');
        $this->assertSame([$id], $archiver->send(['cmd' => 'claim', 'ids' => [$id]])['won']);
        // Sessions opened from now on read local times an hour (then thirteen) apart from the
        // archiver's: its heartbeats, written as DATETIME, used to look an hour stale.
        TestDatabase::admin()->exec("SET GLOBAL time_zone = '+01:00'");
        $reaper = $this->server('reaper', [], 'tz-reaper');
        $this->assertSame(['alive/heartbeat_fresh/kept'], $this->reapFor($reaper, $id, 4.0), 'lease 3 s');

        // The archiver's connections drop and come back in the new zone: its next claim is
        // still written in the zone its registration recorded.
        $own = (int) $this->pdo->query('SELECT CONNECTION_ID()')->fetchColumn();
        $sessions = TestDatabase::admin()->prepare('SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> ?');
        $sessions->execute([$this->config['dbname'], $own]);
        foreach ($sessions->fetchAll(\PDO::FETCH_COLUMN) as $session) {
            TestDatabase::admin()->exec("KILL $session");
        }
        $this->assertSame([$second], $archiver->send(['cmd' => 'claim', 'ids' => [$second]])['won']);

        TestDatabase::admin()->exec("SET GLOBAL time_zone = '-12:00'");
        $late = $this->server('late', [], 'tz-late-reaper');
        $late->send(['cmd' => 'register']); // a watcher: only a watch proves a silence
        $this->assertSame(['alive/heartbeat_fresh/kept'], $this->reapFor($late, $second, 2.0));

        // A real death is still found through the lease, whatever the zones: both rows.
        $this->servers['archiver']->killWhole();
        unset($this->servers['archiver']);
        $released = [];
        $deadline = microtime(true) + 10;
        while (count($released) < 2 && microtime(true) < $deadline) {
            foreach (self::byId($late->send(['cmd' => 'reap'])) as $row => $entry) {
                if ($entry['action'] !== 'kept') {
                    $released[$row] = [$entry['verdict'], $entry['reason'], $entry['action']];
                }
            }
            usleep(200000);
        }
        ksort($released);
        $this->assertSame([$id => ['dead', 'heartbeat_stale', 'reset'], $second => ['dead', 'heartbeat_stale', 'reset']], $released);
    }

    public function testAReaperInAnotherTimeZoneDoesNotSeeALiveClaimAsPastTheTimeout(): void
    {
        // The archiver writes ts_started in the zone its registration recorded; a reaper whose
        // sessions run thirteen hours ahead read that local time as thirteen hours old, past a
        // one-hour archive_failure_recovery_timeout: the claim's age is its owner's reading.
        [$id] = $this->queue([['idsite' => 1]]);
        $archiver = $this->server('archiver', [], 'tz-archiver');
        $this->assertSame([$id], $archiver->send(['cmd' => 'claim', 'ids' => [$id]])['won']);
        TestDatabase::admin()->exec("SET GLOBAL time_zone = '+13:00'");
        $reaper = $this->server('reaper', [], 'tz-reaper');
        $entry = self::byId($reaper->send(['cmd' => 'reap', 'options' => ['timeout' => 3600, 'dry_run' => true]]))[$id];
        $this->assertSame(['alive', 'heartbeat_fresh', 'kept'], [$entry['verdict'], $entry['reason'], $entry['action']]);
        $this->assertLessThan(3600, $entry['age_seconds']);
        $shown = $reaper->send(['cmd' => 'in_progress'])['rows'][0];
        $this->assertLessThan(3600, $shown['age_seconds']);
    }

    public function testAClockStepCannotMakeARegisteredOwnerLookReused(): void
    {
        [$id] = $this->queue([[]]);
        $server = $this->server('s', [], 'clock-host');
        $owner = $server->send(['cmd' => 'spawn', 'ids' => [$id]]);
        $this->assertSame([$id], $owner['won']);
        foreach ([5, 3600, -3600] as $step) {
            $stepped = $server->send(['cmd' => 'reap_with_clock_stepped', 'seconds' => $step]);
            $entry = self::byId($stepped['report'])[$id];
            $this->assertSame(['alive', 'heartbeat_fresh', 'kept'], [$entry['verdict'], $entry['reason'], $entry['action']],
                "boot time moved by $step s");
        }
        $server->send(['cmd' => 'kill', 'pid' => $owner['pid']]);
        $entry = self::byId($server->send(['cmd' => 'reap_with_clock_stepped', 'seconds' => 3600])['report'])[$id];
        $this->assertSame(['dead', 'pid_gone', 'reset'], [$entry['verdict'], $entry['reason'], $entry['action']]);
    }

    public function testAProcessWhoseHeartbeatCannotConnectClaimsUnregisteredAndIsNeverReleasedOnALease(): void
    {
        $admin = TestDatabase::admin();
        $user = 'mac_limited_' . bin2hex(random_bytes(3));
        $admin->exec("CREATE USER '$user'@'%' IDENTIFIED BY 'pw' WITH MAX_USER_CONNECTIONS 1");
        $admin->exec("GRANT ALL ON `{$this->config['dbname']}`.* TO '$user'@'%'");
        try {
            [$id] = $this->queue([[]]);
            $limited = $this->server('limited', [], 'limited-host', ['username' => $user, 'password' => 'pw'] + $this->config);
            // Its one connection claims; the heartbeat's would be the second: it says so.
            $this->assertSame([$id], $limited->send(['cmd' => 'claim', 'ids' => [$id]])['won']);
            try {
                $limited->send(['cmd' => 'register']);
                $this->fail('registered without a heartbeat connection');
            } catch (\RuntimeException $e) {
                $this->assertStringContainsString('ConnectionException', $e->getMessage());
                $this->assertStringContainsString('heartbeat', $e->getMessage());
            }
            $registry = "{$this->config['tables_prefix']}archive_claim_process";
            $registered = $this->pdo->query("SHOW TABLES LIKE '$registry'")->fetchColumn()
                ? (int) $this->pdo->query("SELECT COUNT(*) FROM $registry WHERE host = 'limited-host'")->fetchColumn() : 0;
            $this->assertSame(0, $registered, 'no registration that would go stale');

            $reaper = $this->server('reaper', [], 'watching-host');
            $this->assertSame(['unknown/remote_unregistered/kept'], $this->reapFor($reaper, $id, 4.0), 'lease 3 s');
            $this->assertSame(1, (int) $this->row($id)['status']);
        } finally {
            foreach ($this->servers as $s) {
                $s->stop();
            }
            $this->servers = [];
            $admin->exec("DROP USER '$user'@'%'");
        }
    }

    public function testAStockClaimerThatGotTheDeadOwnersPidKeepsItsClaim(): void
    {
        [$orphan, $live] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $server = $this->server('s', [], 'reuse-host');
        $owner = $server->send(['cmd' => 'spawn', 'ids' => [$orphan]]);
        $this->assertSame([$orphan], $owner['won']);
        $server->send(['cmd' => 'kill', 'pid' => $owner['pid']]);
        sleep(3); // the next process with that pid starts after the claim, beyond the margin
        $stock = $server->send(['cmd' => 'spawn', 'ids' => [$live], 'extension' => false, 'pid' => $owner['pid']]);
        $this->assertSame($owner['pid'], $stock['pid'], 'ns_last_pid gave the stock claimer the dead owner\'s pid');
        $this->assertSame([$live], $stock['won']);

        $entries = self::byId($server->send(['cmd' => 'reap']));
        $this->assertSame(['alive', 'pid_alive', 'kept'], [$entries[$live]['verdict'], $entries[$live]['reason'], $entries[$live]['action']],
            'the stale registration does not speak for a claim made after its owner died');
        // The older row speaks for the dead registration (claimed within its life, read in the
        // zone it recorded) and the process now holding the pid started after that claim: the
        // kernel's frame (other start ticks) proves its owner gone, at once, not at the timeout.
        $this->assertSame(['dead', 'pid_reused', 'reset'], [$entries[$orphan]['verdict'], $entries[$orphan]['reason'], $entries[$orphan]['action']]);
        // Once no process holds the pid, whoever claimed is dead: the live row comes back too.
        $server->send(['cmd' => 'kill', 'pid' => $stock['pid']]);
        $entries = self::byId($server->send(['cmd' => 'reap']));
        $this->assertSame(['dead', 'pid_gone', 'reset'], [$entries[$live]['verdict'], $entries[$live]['reason'], $entries[$live]['action']]);
    }

    public function testPidsOfAHostNameUsedByTwoPidNamespacesProveNothing(): void
    {
        [$id] = $this->queue([[]]);
        $a = $this->server('a', [], 'shared-name');
        $b = $this->server('b', [], 'shared-name');
        $b->send(['cmd' => 'register']);
        $stock = $b->send(['cmd' => 'spawn', 'ids' => [$id], 'extension' => false]);
        $this->assertSame([$id], $stock['won']);
        $a->send(['cmd' => 'register']);

        $entry = self::byId($a->send(['cmd' => 'reap']))[$id];
        $this->assertSame(['unknown', 'host_name_shared', 'kept'], [$entry['verdict'], $entry['reason'], $entry['action']],
            "pid {$stock['pid']} of the other namespace is not ours to judge");
        $local = self::byId($b->send(['cmd' => 'reap']))[$id];
        $this->assertSame('kept', $local['action']);
    }

    public function testAnOperatorCanDeclareAHostNameSharedWhenNoOtherNamespaceRegisters(): void
    {
        [$id] = $this->queue([[]]);
        $b = $this->server('b', [], 'compose-replica');
        // A pid the other namespaces do not use themselves (theirs are a handful).
        $stock = $b->send(['cmd' => 'spawn', 'ids' => [$id], 'extension' => false, 'pid' => 300]);
        $this->assertSame([$id], $stock['won']);
        $plain = $this->server('plain', [], 'compose-replica');
        $declared = $this->server('declared', ['host_name_shared' => 1], 'compose-replica');

        $entry = self::byId($declared->send(['cmd' => 'reap']))[$id];
        $this->assertSame(['unknown', 'host_name_shared', 'kept'], [$entry['verdict'], $entry['reason'], $entry['action']]);
        // Without the setting nothing shows the other namespace, and its pid looks gone here:
        // that is what the setting is for (and the same-host rule on plain servers).
        $dry = self::byId($plain->send(['cmd' => 'reap', 'options' => ['dry_run' => true]]))[$id];
        $this->assertSame('dead', $dry['verdict']);
    }

    public function testAnArchivingChildKeepsItsDeadParentsClaimOnItsHost(): void
    {
        [$id] = $this->queue([[]]);
        $server = $this->server('s', [], 'child-host');
        $parent = $server->send(['cmd' => 'spawn', 'ids' => [$id]]);
        $this->assertSame([$id], $parent['won']);
        // A stock child, as Matomo starts it: its command line names the parent.
        $child = $server->send(['cmd' => 'spawn', 'ids' => [], 'extension' => false,
            'argv' => ['climulti:request', "module=API&method=CoreAdminHome.archiveReports&idSite=1&pid=9&runid={$parent['pid']}"]]);
        $server->send(['cmd' => 'kill', 'pid' => $parent['pid']]);

        $entry = self::byId($server->send(['cmd' => 'reap']))[$id];
        $this->assertSame(['alive', 'child_working', 'kept'], [$entry['verdict'], $entry['reason'], $entry['action']]);
        $server->send(['cmd' => 'kill', 'pid' => $child['pid']]);
        $entry = self::byId($server->send(['cmd' => 'reap']))[$id];
        $this->assertSame(['dead', 'pid_gone', 'reset'], [$entry['verdict'], $entry['reason'], $entry['action']]);
    }

    public function testARegisteredChildKeepsItsDeadParentsClaimSeenFromAnotherHost(): void
    {
        [$id] = $this->queue([[]]);
        $server = $this->server('s', [], 'child-host');
        $parent = $server->send(['cmd' => 'spawn', 'ids' => [$id]]);
        $child = $server->send(['cmd' => 'spawn', 'ids' => [], 'register' => true,
            'argv' => ['climulti:request', "module=API&runid={$parent['pid']}"]]);
        $server->send(['cmd' => 'kill', 'pid' => $parent['pid']]);
        $remote = $this->server('r', [], 'other-host');
        $remote->send(['cmd' => 'register']); // a watcher: only a watch proves a silence

        // Lease 3 s, the parent is silent: the claim is kept throughout (alive by its parent's
        // timestamp at first, while the child's registration waits for its first beat) and,
        // once the parent's silence is proven, by the child.
        $seen = $this->reapFor($remote, $id, 4.0);
        $this->assertSame([], array_values(array_filter($seen, fn ($s) => !preg_match('#^alive/[a-z_]+/kept$#', $s))), json_encode($seen));
        $this->assertSame('alive/child_working/kept', end($seen), json_encode($seen));
        $server->send(['cmd' => 'kill', 'pid' => $child['pid']]);
        $entry = $this->reapUntilReleased($remote, $id, 10);
        $this->assertSame(['dead', 'heartbeat_stale', 'reset'], [$entry['verdict'], $entry['reason'], $entry['action']]);
    }

    // Found by an adversarial review: each failed before the fix it names in git log.

    /** Two containers share a host name (declared): A's stock claimer holds pid P; a registered
     *  process with pid P dies in B: B's reaper must not release A's live claim. */
    public function testADeadRegistrationInAnotherNamespaceNeverReleasesAStockClaimThere(): void
    {
        [$id] = $this->queue([[]]);
        $a = $this->server('a', ['host_name_shared' => 1], 'compose-shared');
        $b = $this->server('b', ['host_name_shared' => 1], 'compose-shared');
        $stock = $a->send(['cmd' => 'spawn', 'ids' => [$id], 'extension' => false]);
        $this->assertSame([$id], $stock['won']);
        $x = $b->send(['cmd' => 'spawn', 'ids' => [], 'register' => true, 'pid' => $stock['pid']]);
        $this->assertSame($stock['pid'], $x['pid']);
        $b->send(['cmd' => 'kill', 'pid' => $x['pid']]);
        $entry = self::byId($b->send(['cmd' => 'reap']))[$id];
        $this->assertSame('kept', $entry['action'], 'live stock claim in A: ' . json_encode($entry));
    }

    /** The same as the first test, with automatic reaping on: nobody calls reap_orphans(). */
    public function testADeadRegistrationInAnotherNamespaceNeverReleasesAStockClaimThereAutomatically(): void
    {
        [$id] = $this->queue([[]]);
        $ini = ['host_name_shared' => 1, 'auto_reap' => 1];
        $b = $this->server('b', $ini, 'compose-auto');
        $b->send(['cmd' => 'register']);
        $a = $this->server('a', $ini, 'compose-auto');
        $a->send(['cmd' => 'register']);
        $stock = $a->send(['cmd' => 'spawn', 'ids' => [$id], 'extension' => false, 'pid' => 40]);
        $this->assertSame([$id], $stock['won']);
        $x = $b->send(['cmd' => 'spawn', 'ids' => [], 'register' => true, 'pid' => 40]);
        $this->assertSame(40, $x['pid']);
        $b->send(['cmd' => 'kill', 'pid' => 40]);
        $t = microtime(true);
        while (microtime(true) - $t < 8 && (int) $this->row($id)['status'] === 1) {
            usleep(50000);
        }
        $this->assertSame(1, (int) $this->row($id)['status'], sprintf('live stock claim released automatically after %.2f s', microtime(true) - $t));
    }

    /** A container restarts (same kernel boot, new pid namespace): the old instance's registered
     *  pid P is stale; the new instance's unregistered claimer got pid P and claimed within a lease:
     *  no reaper, there or elsewhere, may take it for the old one's. */
    public function testARestartedContainersOldRegistrationNeverReleasesItsNewStockClaim(): void
    {
        [$id] = $this->queue([[]]);
        $ini = ['lease' => 6];
        $old = $this->server('old', $ini, 'restarted');
        $x = $old->send(['cmd' => 'spawn', 'ids' => [], 'register' => true, 'pid' => 50]);
        $this->assertSame(50, $x['pid']);
        sleep(1);
        $old->killWhole();
        unset($this->servers['old']);
        $new = $this->server('new', $ini, 'restarted');
        $new->send(['cmd' => 'register']); // the new instance runs the extension too
        $stock = $new->send(['cmd' => 'spawn', 'ids' => [$id], 'extension' => false, 'pid' => 50]);
        $this->assertSame([$id], $stock['won']);
        sleep(7); // the old registration is now stale; the claim was made within its lease
        $entry = self::byId($new->send(['cmd' => 'reap', 'options' => ['dry_run' => true]]))[$id];
        $this->assertNotSame('dead', $entry['verdict'], 'the new instance\'s own reaper: ' . json_encode($entry));
        $other = $this->server('fleet', $ini, 'elsewhere');
        $entry = self::byId($other->send(['cmd' => 'reap', 'options' => ['dry_run' => true]]))[$id];
        $this->assertNotSame('dead', $entry['verdict'], 'reaper elsewhere: ' . json_encode($entry));
    }

    /** A registered owner dies; a stock process gets its pid and claims after a SET GLOBAL
     *  time_zone: read in the dead owner's zone the row looks older than its claimer; kept. */
    public function testAZoneChangeCannotMakeAStockClaimOfAReusedPidLookLikeTheDeadOwners(): void
    {
        [$orphan, $live] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $server = $this->server('s', [], 'tz-reuse-host');
        $owner = $server->send(['cmd' => 'spawn', 'ids' => [$orphan]]);
        $this->assertSame([$orphan], $owner['won']);
        $server->send(['cmd' => 'kill', 'pid' => $owner['pid']]);
        sleep(3);
        TestDatabase::admin()->exec("SET GLOBAL time_zone = '-05:00'");
        $stock = $server->send(['cmd' => 'spawn', 'ids' => [$live], 'extension' => false, 'pid' => $owner['pid']]);
        $this->assertSame($owner['pid'], $stock['pid']);
        $this->assertSame([$live], $stock['won']);
        TestDatabase::admin()->exec("SET GLOBAL time_zone = 'SYSTEM'");
        $entries = self::byId($server->send(['cmd' => 'reap']));
        $this->assertSame('kept', $entries[$live]['action'], 'live stock claim: ' . json_encode($entries[$live]));
    }

    /** /proc mounted hidepid=2 (or systemd ProtectProc=invisible) for the reaper's user: a
     *  registered owner of another user is invisible: not gone. */
    public function testAnOwnerHiddenByHidepidIsNotReadAsGone(): void
    {
        [$id] = $this->queue([[]]);
        $ext = TestDatabase::extensionPath();
        $cfg = var_export($this->config, true);
        $owner = proc_open([PHP_BINARY, '-d', "extension=$ext", '-d', 'matomo_archive_claim.auto_reap=0', '-r',
            "Matomo\\ArchiveClaim\\configure($cfg); echo json_encode([getmypid(), Matomo\\ArchiveClaim\\claim_invalidation($id)]), \"\\n\"; fgets(STDIN);"],
            [0 => ['pipe', 'r'], 1 => ['pipe', 'w']], $pipes);
        [$pid, $won] = json_decode((string) fgets($pipes[1]), true);
        $this->assertTrue($won);
        $reaper = "Matomo\\ArchiveClaim\\configure($cfg); echo json_encode(Matomo\\ArchiveClaim\\reap_orphans(['dry_run' => true]));";
        $cmd = ['unshare', '--mount', 'sh', '-c', 'mount -t proc -o hidepid=2 proc /proc && exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@"', 'x',
            PHP_BINARY, '-d', "extension=$ext", '-d', 'matomo_archive_claim.auto_reap=0', '-r', $reaper];
        $out = shell_exec(implode(' ', array_map('escapeshellarg', $cmd)) . ' 2>&1');
        $report = json_decode((string) $out, true);
        $this->assertIsArray($report, (string) $out);
        $entry = self::byId($report)[$id];
        fwrite($pipes[0], "\n");
        proc_close($owner);
        $this->assertNotSame('dead', $entry['verdict'], "owner $pid runs: " . json_encode($entry));
    }
}
