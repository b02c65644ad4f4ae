<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use function Matomo\ArchiveClaim\claim_invalidation;
use function Matomo\ArchiveClaim\complete_invalidations;
use function Matomo\ArchiveClaim\release_invalidations;

/**
 * The request is the unit of work: claims a request leaves behind are given back when it ends
 * (however it ends), in php-fpm and CLI alike, and a later request in the same worker is a new
 * owner. Runs a real php-fpm pool of one worker, driven through FastCGI with cgi-fcgi.
 */
final class RequestScopeTest extends ExtensionTestCase
{
    private ?FpmPool $fpm = null;

    /** What every request runs: claim the ids asked for, then end as asked. */
    private const SCRIPT = <<<'PHP'
        <?php
        use Matomo\ArchiveClaim as AC;
        $c = json_decode(file_get_contents(__DIR__ . '/db.json'), true);
        AC\configure($c['config']);
        $q = $_GET;
        $ids = array_values(array_filter(array_map('intval', explode(',', $q['ids'] ?? ''))));
        $won = array_values(array_filter($ids, fn ($id) => AC\claim_invalidation($id)));
        echo 'RESULT ', json_encode(['pid' => getmypid(), 'won' => $won]), "\n";
        switch ($q['end'] ?? 'normal') {
            case 'fatal':
                undefined_function_to_die_with();
            case 'exception':
                throw new RuntimeException('the archiver failed');
            case 'exit':
                exit(3);
            case 'time_limit':
                set_time_limit(1);
                for (;;) {
                }
            case 'memory_limit':
                ini_set('memory_limit', '32M');
                $hog = [];
                for (;;) {
                    $hog[] = str_repeat('x', 1 << 20);
                }
            case 'complete':
                // A request that finishes its work: completes some, gives the rest back itself.
                $half = intdiv(count($won), 2);
                echo 'DONE ', json_encode([
                    'completed' => AC\complete_invalidations(array_slice($won, 0, $half)),
                    'released' => AC\release_invalidations(array_slice($won, $half)),
                ]), "\n";
                break;
            case 'finish_others':
                // Tries to finish rows it did not claim in this request.
                $others = array_map('intval', explode(',', $q['others']));
                echo 'DONE ', json_encode([
                    'completed' => AC\complete_invalidations($others),
                    'released' => AC\release_invalidations($others),
                ]), "\n";
                break;
            case 'lock_out':
                // The database refuses us from now on: our session is killed and our account
                // locked, so the release at request end cannot reconnect.
                $admin = new PDO($c['admin_dsn'], $c['admin_user'], $c['admin_password'],
                    [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
                $admin->exec("ALTER USER '{$c['config']['username']}'@'%' ACCOUNT LOCK");
                $s = $admin->prepare('SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?');
                $s->execute([$c['config']['username']]);
                foreach ($s->fetchAll(PDO::FETCH_COLUMN) as $id) {
                    $admin->exec("KILL $id");
                }
                if (($q['then'] ?? '') === 'memory_limit') {
                    ini_set('memory_limit', '32M');
                    $hog = [];
                    for (;;) {
                        $hog[] = str_repeat('x', 1 << 20);
                    }
                }
                break;
        }
        PHP;

    private string $script;
    private ?string $lockedUser = null;

    protected function tearDown(): void
    {
        $this->fpm?->stop();
        if ($this->lockedUser !== null) {
            TestDatabase::admin()->exec("DROP USER IF EXISTS '{$this->lockedUser}'@'%'");
        }
        parent::tearDown();
    }

    /**
     * Starts the pool connecting as a user of its own (which a request can lock out mid-way,
     * and which tearDown drops); returns that user's name.
     */
    private function startPoolAsItsOwnUser(): string
    {
        $user = 'mac_fpm_' . bin2hex(random_bytes(3));
        $admin = TestDatabase::admin();
        $admin->exec("CREATE USER '$user'@'%' IDENTIFIED BY 'pw'");
        $admin->exec("GRANT ALL ON `{$this->config['dbname']}`.* TO '$user'@'%'");
        $this->lockedUser = $user;
        $this->startPool(['username' => $user, 'password' => 'pw'] + $this->config);
        return $user;
    }

    /** Starts the pool; its requests use $config (default: the test's database). */
    private function startPool(?array $config = null): void
    {
        $why = FpmPool::unavailable();
        if ($why !== null) {
            $this->markTestSkipped($why); // never passed without a real php-fpm
        }
        $this->fpm = new FpmPool();
        $s = TestDatabase::server();
        file_put_contents($this->fpm->dir() . '/db.json', json_encode([
            'config' => $config ?? $this->config,
            'admin_dsn' => "mysql:host={$s['host']};port={$s['port']}",
            'admin_user' => $s['user'],
            'admin_password' => $s['password'],
        ]));
        $this->script = $this->fpm->script('archive.php', self::SCRIPT);
    }

    /** @return array{pid:int, won:int[], body:string} */
    private function request(array $query): array
    {
        $body = $this->fpm->request($this->script, $query);
        $this->assertMatchesRegularExpression('/^RESULT /m', $body, "the request ran:\n$body");
        preg_match('/^RESULT (.*)$/m', $body, $m);
        return json_decode($m[1], true) + ['body' => $body];
    }

    private function assertQueued(int $id, string $why): void
    {
        $row = $this->row($id);
        $this->assertNotNull($row, $why);
        $this->assertSame(0, (int) $row['status'], $why);
        $this->assertNull($row['processing_host'], $why);
        $this->assertNull($row['process_id'], $why);
        $this->assertNull($row['ts_started'], $why);
    }

    public function testClaimsOfARequestThatDiesAreQueuedAgainWhenItEndsAndTheWorkerLivesOn(): void
    {
        $this->startPool();
        $worker = null;
        $round = 0;
        foreach ([
            'fatal' => 'Call to undefined function',
            'exception' => 'the archiver failed',
            'exit' => null,
            'time_limit' => 'Maximum execution time',
            'memory_limit' => 'Allowed memory size',
        ] as $end => $message) {
            // Sites of their own: a row released while the same archive is queued would be
            // deleted as a duplicate (Matomo's rule), not re-queued.
            $site = 10 * ++$round;
            $ids = $this->queue([['idsite' => $site], ['idsite' => $site + 1]]);
            $r = $this->request(['ids' => implode(',', $ids), 'end' => $end]);
            $this->assertSame($ids, $r['won'], $end);
            if ($message !== null) {
                $this->assertStringContainsString($message, $r['body'], "the request died of $end");
            }
            foreach ($ids as $id) {
                $this->assertQueued($id, "released at the end of a request that ended by $end");
            }
            $worker ??= $r['pid'];
            $this->assertSame($worker, $r['pid'], 'the same worker served every request');
            $this->assertTrue(posix_kill($worker, 0), "the worker outlived the request that ended by $end");
        }
    }

    public function testARequestThatFinishesItsWorkLeavesNothingToRelease(): void
    {
        $this->startPool();
        $ids = $this->queue([['idsite' => 1], ['idsite' => 2], ['idsite' => 3], ['idsite' => 4]]);
        $r = $this->request(['ids' => implode(',', $ids), 'end' => 'complete']);
        $this->assertStringContainsString('DONE {"completed":2,"released":2}', $r['body']);
        $this->assertNull($this->row($ids[0]));
        $this->assertNull($this->row($ids[1]));
        $this->assertQueued($ids[2], 'released by the request itself');
        $this->assertQueued($ids[3], 'released by the request itself');
        $this->assertSame('', $this->fpm->phpLog(), 'nothing failed at request end');
    }

    public function testTheNextRequestInTheWorkerIsANewOwner(): void
    {
        $this->startPool();
        [$mine, $leftBehind] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $worker = $this->request([])['pid'];
        // A row under this worker's host and pid that no request of this pool claimed through
        // the extension: what an earlier request leaves when its release at the end failed
        // (below), or a stock Matomo claim made in this worker.
        $this->claimAs($leftBehind, gethostname(), (string) $worker);
        $before = $this->row($leftBehind);

        $r = $this->request(['ids' => (string) $mine, 'end' => 'finish_others', 'others' => "$leftBehind"]);
        $this->assertSame($worker, $r['pid']);
        $this->assertStringContainsString('DONE {"completed":0,"released":0}', $r['body'],
            'not this request\'s claim: neither completed nor released');
        $this->assertSame($before, $this->row($leftBehind), 'and left alone at its end too');
        $this->assertQueued($mine, 'its own unfinished claim was given back');
    }

    public function testAReleaseThatFailsAtRequestEndIsLoggedAndRetriedAtTheNextRequestsEnd(): void
    {
        // The pool connects as its own user, which the first request locks out mid-way.
        $user = $this->startPoolAsItsOwnUser();

        [$id, $other] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $r = $this->request(['ids' => (string) $id, 'end' => 'lock_out']);
        $this->assertSame([$id], $r['won']);
        $row = $this->row($id);
        $this->assertSame(1, (int) $row['status'], 'the database refused the release');
        $this->assertSame((string) $r['pid'], $row['process_id']);
        $this->assertStringContainsString('could not release 1 claim(s) left by this request', $this->fpm->phpLog());

        TestDatabase::admin()->exec("ALTER USER '$user'@'%' ACCOUNT UNLOCK");
        // The next request in the worker may not finish the left-behind claim...
        $next = $this->request(['ids' => (string) $other, 'end' => 'finish_others', 'others' => "$id"]);
        $this->assertSame($r['pid'], $next['pid']);
        $this->assertStringContainsString('DONE {"completed":0,"released":0}', $next['body']);
        // ...but its end gives it back, with its own.
        $this->assertQueued($id, 'retried at the end of the next request');
        $this->assertQueued($other, 'the next request\'s own claim');
    }

    public function testAFailedReleaseAfterTheMemoryLimitLeavesTheWorkerAliveAndIsRetried(): void
    {
        // Both at once: the request died of memory_limit (its memory still held during request
        // shutdown) and the release fails. Logging would need PHP's allocator and is skipped;
        // nothing may crash the worker.
        $user = $this->startPoolAsItsOwnUser();

        [$id] = $this->queue([[]]);
        $r = $this->request(['ids' => (string) $id, 'end' => 'lock_out', 'then' => 'memory_limit']);
        $this->assertStringContainsString('Allowed memory size', $r['body']);
        $this->assertSame(1, (int) $this->row($id)['status'], 'the database refused the release');

        TestDatabase::admin()->exec("ALTER USER '$user'@'%' ACCOUNT UNLOCK");
        $next = $this->request([]);
        $this->assertSame($r['pid'], $next['pid'], 'the same worker, alive');
        $this->assertQueued($id, 'retried at the end of the next request');
    }

    public function testACliScriptThatEndsWithoutFinishingGivesItsClaimsBack(): void
    {
        $ids = $this->queue([['idsite' => 1], ['idsite' => 2], ['idsite' => 3]]);
        $config = var_export($this->config, true);
        [$code, $out, $err] = $this->runPhp("Matomo\\ArchiveClaim\\configure($config);
            foreach ([{$ids[0]}, {$ids[1]}, {$ids[2]}] as \$id) { Matomo\\ArchiveClaim\\claim_invalidation(\$id); }
            Matomo\\ArchiveClaim\\complete_invalidations([{$ids[0]}]);
            echo count(Matomo\\ArchiveClaim\\in_progress());
            exit(0);");
        $this->assertSame(0, $code, $err);
        $this->assertSame('2', $out, 'two claims were held while it ran');
        $this->assertNull($this->row($ids[0]), 'completed');
        $this->assertQueued($ids[1], 'released when the script ended');
        $this->assertQueued($ids[2], 'released when the script ended');
    }

    public function testAForkedChildNeverGivesBackItsParentsClaims(): void
    {
        [$parents, $childs] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $config = var_export($this->config, true);
        // The parent claims, forks; the child claims its own row and exits normally (running
        // request shutdown). The parent then reports what it sees and ends in turn.
        [$code, $out, $err] = $this->runPhp("Matomo\\ArchiveClaim\\configure($config);
            Matomo\\ArchiveClaim\\claim_invalidation($parents);
            \$pid = pcntl_fork();
            if (\$pid === 0) { Matomo\\ArchiveClaim\\claim_invalidation($childs); exit(0); }
            pcntl_waitpid(\$pid, \$status);
            \$rows = array_column(Matomo\\ArchiveClaim\\in_progress(), 'process_id', 'idinvalidation');
            echo json_encode(\$rows + ['me' => getmypid()]);");
        $this->assertSame(0, $code, $err);
        $seen = json_decode($out, true);
        $this->assertSame([$parents => (string) $seen['me'], 'me' => $seen['me']], $seen,
            "after the child ended: the parent's claim still held, the child's own given back");
        $this->assertQueued($parents, 'released when the parent ended');
        $this->assertQueued($childs, 'released when the child ended');
    }

    public function testACoreArchiveRunThatEndsWhileItsArchivingChildWorksKeepsTheClaim(): void
    {
        // As Matomo's CliMulti: a detached `climulti:request ... runid=<parent pid>` child does
        // the archiving; the parent's run ends (here by a fatal error) while it still works.
        [$id] = $this->queue([[]]);
        $flag = tempnam(sys_get_temp_dir(), 'mac-child');
        $config = var_export($this->config, true);
        $child = escapeshellarg(PHP_BINARY) . ' -n -r ' . escapeshellarg('while (file_exists($argv[1])) { usleep(20000); }')
            . ' ' . escapeshellarg($flag) . ' climulti:request ' . escapeshellarg('module=API&method=CoreAdminHome.archiveReports&runid=');
        [$code, $out] = $this->runPhp("Matomo\\ArchiveClaim\\configure($config);
            Matomo\\ArchiveClaim\\claim_invalidation($id);
            shell_exec(" . var_export($child, true) . " . getmypid() . ' > /dev/null 2>&1 &');
            echo getmypid();
            undefined_function_to_die_with();");
        $this->assertSame(255, $code);
        $parent = (int) $out;
        try {
            $this->assertFalse(file_exists("/proc/$parent"), 'the core:archive run is over');
            $row = $this->row($id);
            $this->assertSame(1, (int) $row['status'], 'kept: its archiving child still works on it');
            $this->assertSame((string) $parent, $row['process_id']);
        } finally {
            unlink($flag);
        }
        // The child finishes; nothing works for the claim any more: the reaper proves it dead.
        $children = fn () => array_filter(glob('/proc/[0-9]*/cmdline') ?: [], fn ($f) =>
            str_contains((string) @file_get_contents($f), "runid=$parent"));
        for ($i = 0; $i < 250 && $children(); $i++) {
            usleep(20000);
        }
        $this->assertSame([], $children());
        $report = \Matomo\ArchiveClaim\reap_orphans();
        $this->assertSame(1, $report['released'], json_encode($report));
        $this->assertQueued($id, 'reaped once the child was gone');
    }

    public function testInThisProcessCompleteAndReleaseActOnlyOnThisRequestsClaims(): void
    {
        [$mine, $stock] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $this->assertTrue(claim_invalidation($mine));
        // Matomo's own statement in this very process (a stock claim): same host and pid.
        $this->claimAs($stock, gethostname(), (string) getmypid());
        $this->assertSame(0, complete_invalidations([$stock]));
        $this->assertSame(0, release_invalidations([$stock]));
        $this->assertSame(1, (int) $this->row($stock)['status']);
        $this->assertSame(1, complete_invalidations([$mine, $stock]));
    }
}
