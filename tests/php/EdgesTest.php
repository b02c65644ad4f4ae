<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

/**
 * Issue 11: what a careful user expects at the edges (a registration that failed once, host
 * names the table cannot store, big results, secrets in traces).
 */
final class EdgesTest extends ExtensionTestCase
{
    private ?string $user = null;

    protected function tearDown(): void
    {
        $admin = TestDatabase::admin();
        $admin->exec('SET GLOBAL read_only = 0');
        if ($this->user !== null) {
            $admin->exec("DROP USER IF EXISTS '{$this->user}'@'%'");
        }
        parent::tearDown();
    }

    /** A user without SUPER (read_only binds it), with all rights on the test database. */
    private function plainUser(): array
    {
        $this->user = 'mac_edge_' . bin2hex(random_bytes(3));
        $admin = TestDatabase::admin();
        $admin->exec("CREATE USER '{$this->user}'@'%' IDENTIFIED BY 'pw'");
        $admin->exec("GRANT ALL ON `{$this->config['dbname']}`.* TO '{$this->user}'@'%'");
        return ['username' => $this->user, 'password' => 'pw'] + $this->config;
    }

    public function testAProcessWhoseRegistrationFailedRegistersAgainOnALaterClaim(): void
    {
        [$a, $b, $c] = $this->queue([[], [], []]);
        $admin = TestDatabase::server();
        // In the child: the database goes read-only (the registration and the claim fail), comes
        // back, and later claims must register again: half a lease (1.5 s here) after the failure.
        $code = sprintf(<<<'PHP'
            $config = %s; [$a, $b, $c] = %s; $s = %s;
            $admin = new PDO("mysql:host={$s['host']};port={$s['port']}", $s['user'], $s['password']);
            $registered = function () use ($admin, $config) {
                return (int) $admin->query("SELECT COUNT(*) FROM `{$config['dbname']}`.`matomo_archive_claim_process` WHERE pid = " . getmypid())->fetchColumn();
            };
            Matomo\ArchiveClaim\configure($config);
            Matomo\ArchiveClaim\install_schema();
            $admin->exec('SET GLOBAL read_only = 1');
            try { Matomo\ArchiveClaim\claim_invalidation($a); echo "claimed under read_only\n"; }
            catch (Matomo\ArchiveClaim\Exception $e) { echo "refused\n"; }
            $admin->exec('SET GLOBAL read_only = 0');
            echo Matomo\ArchiveClaim\claim_invalidation($b) ? 'claimed' : 'lost', ' registered=', $registered(), "\n";
            sleep(2);
            echo Matomo\ArchiveClaim\claim_invalidation($c) ? 'claimed' : 'lost', ' registered=', $registered(), "\n";
            PHP, var_export($this->plainUser(), true), var_export([$a, $b, $c], true), var_export($admin, true));
        [$exit, $out, $err] = $this->runPhp($code, ['matomo_archive_claim.heartbeat_interval' => 1,
            'matomo_archive_claim.lease' => 3, 'matomo_archive_claim.auto_reap' => 0]);
        $this->assertSame(0, $exit, $out . $err);
        $this->assertSame("refused\nclaimed registered=0\nclaimed registered=1\n", $out, $err);
    }

    public function testThePasswordIsInNoTraceOfAnExceptionFromConfigure(): void
    {
        // With zend.exception_ignore_args = 0 (PHP's development default) a trace carries every
        // argument: configure()'s [database] array once appeared there, password and all.
        $code = <<<'PHP'
            function connect_like_a_plugin(#[\SensitiveParameter] array $database): void { Matomo\ArchiveClaim\configure($database); }
            $db = ['host' => 'db', 'dbname' => 'matomo', 'username' => 'u', 'password' => 'S3cret-pw', 'enable_ssl' => '1', 'ssl_key' => '/etc/ssl/client-key.pem'];
            foreach (['Matomo\ArchiveClaim\configure', 'connect_like_a_plugin'] as $f) {
                try { $f($db); echo "configured\n"; }
                catch (Matomo\ArchiveClaim\ConfigurationException $e) {
                    echo get_class($e->getTrace()[0]['args'][0] ?? null), "\n";
                    echo print_r($e->getTrace(), true), "\n", $e, "\n", var_export($e, true), "\n";
                }
            }
            PHP;
        [$exit, $out, $err] = $this->runPhp($code, ['zend.exception_ignore_args' => 0]);
        $this->assertSame(0, $exit, $out . $err);
        $this->assertSame(2, substr_count($out, "SensitiveParameterValue\n"), $out);
        $this->assertStringContainsString('ssl_key is set but ssl_cert is empty', $out, 'the exceptions were thrown');
        $this->assertStringNotContainsString('S3cret-pw', $out . $err);
    }

    /** Runs PHP code in a child whose host name (its own UTS namespace) is $host. */
    private function runPhpAsHost(string $host, string $code): array
    {
        $octal = implode('', array_map(fn ($b) => sprintf('\\%03o', ord($b)), str_split($host)));
        $cmd = array_merge(['unshare', '--uts', 'sh', '-c', "printf '$octal' > /proc/sys/kernel/hostname && exec \"\$@\"", 'sh'],
            TestDatabase::php(['-d', 'matomo_archive_claim.auto_reap=0', '-r', $code]));
        return $this->runCommand($cmd);
    }

    public function testAHostNameTheTableCannotStoreIsRefusedAndNothingIsClaimed(): void
    {
        if (!SimulatedServer::canIsolate()) {
            $this->markTestSkipped('needs root for unshare --uts (a host name of its own)');
        }
        // Older installs have utf8mb3 tables: an emoji host name was stored as '?', and the
        // claim could then never be completed or released by its owner.
        $this->pdo->exec("ALTER TABLE {$this->table()} CONVERT TO CHARACTER SET utf8mb3");
        [$id] = $this->queue([[]]);
        $code = sprintf(<<<'PHP'
            Matomo\ArchiveClaim\configure(%s);
            echo gethostname(), "\n";
            try { var_export(Matomo\ArchiveClaim\claim_invalidation(%d)); }
            catch (Matomo\ArchiveClaim\Exception $e) { echo get_class($e), ': ', $e->getMessage(); }
            echo "\n", Matomo\ArchiveClaim\complete_invalidations([%2$d]), "\n";
            PHP, var_export($this->config, true), $id);
        $host = "srv-\u{1F4A5}";
        [$exit, $out, $err] = $this->runPhpAsHost($host, $code);
        $this->assertSame(0, $exit, $out . $err);
        [$seen, $claim, $completed] = explode("\n", $out);
        $this->assertSame($host, $seen, 'the child has the emoji host name');
        $this->assertStringStartsWith('Matomo\ArchiveClaim\SchemaException: ', $claim);
        $this->assertStringContainsString('(utf8mb3)', $claim);
        $this->assertStringContainsString('nothing was claimed', $claim);
        $this->assertSame('0', $completed);
        $row = $this->row($id);
        $this->assertSame([0, null], [(int) $row['status'], $row['processing_host']], 'the row is still queued');

        // Where the column can hold it, the same name claims and completes.
        $this->pdo->exec("ALTER TABLE {$this->table()} CONVERT TO CHARACTER SET utf8mb4");
        [$exit, $out, $err] = $this->runPhpAsHost($host, $code);
        $this->assertSame(0, $exit, $out . $err);
        $this->assertSame("$host\ntrue\n1\n", $out);
        $this->assertNull($this->row($id), 'completed by its owner');
    }

    public function testInProgressPagesOldestFirstWithLimitAndAfter(): void
    {
        $ids = $this->queue(array_fill(0, 7, []));
        foreach ($ids as $i => $id) {
            // Pairs share a ts_started: the page boundary must not drop or repeat a tied row.
            $this->claimAs($id, 'server2', (string) (100 + $i), 'NOW() - INTERVAL ' . (10 - intdiv($i, 2)) . ' MINUTE');
        }
        $all = \Matomo\ArchiveClaim\in_progress();
        $this->assertSame($ids, array_column($all, 'idinvalidation'));
        $paged = [];
        $after = null;
        do {
            $page = \Matomo\ArchiveClaim\in_progress(['limit' => 3] + ($after === null ? [] : ['after' => $after]));
            $this->assertLessThanOrEqual(3, count($page));
            $paged = array_merge($paged, $page);
            $after = $page ? end($page) : null;
        } while (count($page) === 3);
        $this->assertSame(array_column($all, 'idinvalidation'), array_column($paged, 'idinvalidation'));
        $this->assertSame([$ids[5], $ids[6]], array_column(\Matomo\ArchiveClaim\in_progress(['after' => $all[4]]), 'idinvalidation'));
    }

    public function testInProgressOnAMillionRowsStaysWithinMemoryLimit(): void
    {
        // 950,000 rows once took a process past 2 GB under memory_limit=256M: the extension
        // read every row before PHP saw one, and PHP killed it at its hard limit without
        // running shutdown functions.
        $this->pdo->exec("INSERT INTO {$this->table()} (name, idsite, date1, date2, period, ts_invalidated, ts_started,
            status, processing_host, process_id)
            SELECT 'done', seq % 100 + 1, '2026-11-28', '2026-11-28', 1, NOW(), NOW() - INTERVAL seq SECOND, 1, 'server2', '7'
            FROM seq_1_to_1000000");
        $code = sprintf(<<<'PHP'
            register_shutdown_function(function () {
                preg_match('/VmHWM:\s+(\d+) kB/', file_get_contents('/proc/self/status'), $m);
                echo "shutdown functions ran, peak RSS ", $m[1], " KiB\n";
            });
            Matomo\ArchiveClaim\configure(%s);
            $rows = Matomo\ArchiveClaim\in_progress();
            echo 'default: ', count($rows), ' rows, the oldest first: ', $rows[0]['age_seconds'] >= 1000000 ? 'yes' : 'no', "\n";
            $rows = null;
            try {
                $rows = Matomo\ArchiveClaim\in_progress(['limit' => 1000000]);
                echo 'all: ', count($rows), " rows\n";
            } catch (Matomo\ArchiveClaim\Exception $e) {
                echo get_class($e), ': ', $e->getMessage(), "\n";
            }
            PHP, var_export($this->config, true));
        [$exit, $out, $err] = $this->runPhp($code, ['memory_limit' => '64M']);
        $this->assertSame(0, $exit, $out . $err);
        $this->assertStringContainsString("default: 10000 rows, the oldest first: yes\n", $out, $err);
        $this->assertStringNotContainsString('all: ', $out, 'a million rows do not fit in 64M');
        $this->assertStringContainsString('ConfigurationException: in_progress(): ', $out);
        $this->assertStringContainsString("page with 'after'", $out);
        $this->assertMatchesRegularExpression('/shutdown functions ran, peak RSS (\d+) KiB/', $out);
        preg_match('/peak RSS (\d+) KiB/', $out, $m);
        // PHP itself (about 25 MiB here), its 64 MiB limit and one chunk of 5,000 rows read by
        // the extension; before, this process passed 1.2 GB and was killed at 128 MiB of PHP
        // memory, without shutdown functions.
        $this->assertLessThan(160 * 1024, (int) $m[1], $out);
    }

    public function testAReapRetriedAfterALostConnectionReportsWhatItsFirstAttemptReleased(): void
    {
        $ids = $this->queue([['idsite' => 1], ['idsite' => 2], ['idsite' => 3]]);
        // A registered archiver claims the rows and is killed: its registration stays behind.
        $archiver = proc_open(TestDatabase::php(['-d', 'matomo_archive_claim.auto_reap=0', '-r', sprintf(
            'Matomo\ArchiveClaim\configure(%s); foreach (%s as $id) { Matomo\ArchiveClaim\claim_invalidation($id); }
             echo getmypid(), "\n"; sleep(60);', var_export($this->config, true), var_export($ids, true))]),
            [1 => ['pipe', 'w']], $pipes);
        $pid = (int) fgets($pipes[1]);
        exec("kill -9 $pid");
        proc_close($archiver);
        $registry = "`{$this->config['tables_prefix']}archive_claim_process`";
        $idprocess = (int) $this->pdo->query("SELECT idprocess FROM $registry WHERE pid = $pid")->fetchColumn();
        $this->assertGreaterThan(0, $idprocess, 'the archiver registered');

        // The reap releases the rows (and commits), then forgets the dead registration: hold
        // that row, so the reap waits there, and end its connection while it waits.
        $locker = TestDatabase::matomoPdo($this->config);
        $locker->beginTransaction();
        $locker->query("SELECT * FROM $registry WHERE idprocess = $idprocess FOR UPDATE")->fetchAll();
        $reaper = proc_open(TestDatabase::php(['-d', 'matomo_archive_claim.auto_reap=0', '-r', sprintf(
            'Matomo\ArchiveClaim\configure(%s); $r = Matomo\ArchiveClaim\reap_orphans();
             echo json_encode([$r["released"], array_column($r["rows"], "action", "idinvalidation"), $r["forgotten_registrations"]]);',
            var_export($this->config, true))]), [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $reaperPipes);
        $admin = TestDatabase::admin();
        $session = false;
        for ($i = 0; $i < 300 && $session === false; $i++) {
            usleep(50000);
            $session = $admin->query("SELECT ID FROM information_schema.PROCESSLIST
                WHERE INFO LIKE 'DELETE p FROM%' AND DB = " . $admin->quote($this->config['dbname']))->fetchColumn();
        }
        $this->assertNotFalse($session, 'the reap reached the registry');
        $this->assertSame(0, (int) $this->pdo->query("SELECT COUNT(*) FROM {$this->table()} WHERE status = 1")->fetchColumn(),
            'its release committed before');
        $admin->exec("KILL CONNECTION $session");
        $locker->rollBack();
        $out = stream_get_contents($reaperPipes[1]);
        $err = stream_get_contents($reaperPipes[2]);
        $this->assertSame(0, proc_close($reaper), $out . $err);
        [$released, $actions, $forgotten] = json_decode($out, true);
        $this->assertSame(3, $released, "the retry's report includes the first attempt's releases: $out");
        $this->assertSame(array_fill_keys($ids, 'reset'), $actions);
        $this->assertSame(1, $forgotten, 'and the retry forgot the registration');
    }
}
