<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PHPUnit\Framework\TestCase;

use function Matomo\ArchiveClaim\configure;
use function Matomo\ArchiveClaim\install_schema;

/**
 * The plugin inside a real Matomo 5.2 (../shared/matomo beside the repository), end to end:
 * installed by Matomo's own installer code on the throwaway MariaDB, the plugin copied in and
 * activated with `console plugin:activate`, no file of Matomo edited, and core:archive run for
 * real, with and without the extension. Tests run in order and share the installation.
 *
 * Every PHP "with the extension" gets it the way php.ini would give it (RealMatomo::env), so
 * the climulti:request children Matomo spawns have it too; with heartbeat 1 s and lease 3 s so
 * the crash tests finish quickly.
 */
final class MatomoE2ETest extends TestCase
{
    private const INI = ['heartbeat_interval' => 1, 'lease' => 3, 'auto_reap' => 1];
    private const HEAVY_SITE = 3;
    private const HEAVY_DAY = '2024-01-15';

    private static ?RealMatomo $matomo = null;
    private static string $skip = '';
    private static string $checksum = '';
    private static string $table52 = '';
    /** @var array<string, string> figures for the README, printed at the end */
    private static array $figures = [];

    public static function setUpBeforeClass(): void
    {
        if (RealMatomo::sharedDir() === null) {
            self::$skip = 'no real Matomo: ' . dirname(__DIR__, 3) . '/shared/matomo (install.sh, matomo-5.2.0-b5.tar.xz) '
                . 'is not beside the repository';
            return;
        }
        $t = microtime(true);
        self::$matomo = RealMatomo::install(['SITES' => 3, 'DAYS' => 3, 'VISITS_PER_DAY' => 3, 'START' => '2024-01-01'], self::INI);
        self::$figures['install (unpack, install, 3 sites x 3 days of visits)'] = sprintf('%.1f s', microtime(true) - $t);
        self::$checksum = self::$matomo->coreChecksum();
        self::$table52 = self::createTable('matomo_archive_invalidations');
        self::$matomo->copyPlugin();
    }

    public static function tearDownAfterClass(): void
    {
        if (self::$figures) {
            fwrite(STDERR, "\nMatomo end-to-end figures:\n");
            foreach (self::$figures as $what => $value) {
                fwrite(STDERR, "  $what: $value\n");
            }
        }
        self::$matomo?->remove();
        self::$matomo = null;
    }

    protected function setUp(): void
    {
        if (self::$skip !== '') {
            $this->markTestSkipped(self::$skip);
        }
    }

    private static function m(): RealMatomo
    {
        return self::$matomo;
    }

    private static function createTable(string $table): string
    {
        $ddl = self::m()->pdo()->query("SHOW CREATE TABLE `$table`")->fetch(\PDO::FETCH_NUM)[1];
        return preg_replace('/ AUTO_INCREMENT=\d+/', '', $ddl);
    }

    private function columns(string $table): array
    {
        return self::m()->pdo()->query("SELECT COLUMN_NAME FROM information_schema.COLUMNS
            WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '$table'")->fetchAll(\PDO::FETCH_COLUMN);
    }

    private function indexes(string $table): array
    {
        return array_values(array_unique(self::m()->pdo()->query("SELECT INDEX_NAME FROM information_schema.STATISTICS
            WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '$table'")->fetchAll(\PDO::FETCH_COLUMN)));
    }

    private function hasTable(string $table): bool
    {
        return (bool) self::m()->pdo()->query("SELECT 1 FROM information_schema.TABLES
            WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '$table'")->fetchColumn();
    }

    /** @return array<int, array<string, mixed>> */
    private function invalidations(string $where = '1'): array
    {
        return self::m()->pdo()->query("SELECT * FROM matomo_archive_invalidations WHERE $where ORDER BY idinvalidation")
            ->fetchAll(\PDO::FETCH_ASSOC);
    }

    private function queueRow(array $row): int
    {
        $row += ['idarchive' => null, 'name' => 'done', 'idsite' => 2, 'date1' => '2024-02-05', 'date2' => '2024-02-05',
            'period' => 1, 'status' => 0, 'report' => null];
        $cols = implode(', ', array_map(fn ($c) => "`$c`", array_keys($row)));
        $marks = implode(', ', array_fill(0, count($row), '?'));
        self::m()->pdo()->prepare("INSERT INTO matomo_archive_invalidations ($cols, ts_invalidated) VALUES ($marks, NOW())")
            ->execute(array_values($row));
        return (int) self::m()->pdo()->lastInsertId();
    }

    private function claimAs(int $id, string $host, string $pid, string $started = 'NOW()'): void
    {
        self::m()->pdo()->prepare("UPDATE matomo_archive_invalidations SET status = 1, processing_host = ?, process_id = ?,
            ts_started = $started WHERE idinvalidation = ?")->execute([$host, $pid, $id]);
    }

    /** A pid that no process holds right now. */
    private function goneLocalPid(): int
    {
        $proc = proc_open(['true'], [], $pipes);
        $pid = proc_get_status($proc)['pid'];
        proc_close($proc);
        return $pid;
    }

    /** Matomo console output lines at WARNING or ERROR (what makes core:archive exit 1). */
    private function failures(string $output): array
    {
        return array_values(preg_grep('/^(WARNING|ERROR|CRITICAL|ALERT|EMERGENCY)\b/', explode("\n", $output)));
    }

    /**
     * Runs core:archive in the background and samples the invalidations in progress and the
     * process registry every few milliseconds until it ends.
     *
     * @return array{code: int, output: string, pid: int, seconds: float, claims: array<string, int>, registered: array<int, true>}
     */
    private function archiveWatched(bool $withExtension): array
    {
        $out = tempnam(sys_get_temp_dir(), 'e2e-archive');
        $t = microtime(true);
        $proc = proc_open(self::m()->consoleCommand(['core:archive', '--url=http://localhost/']),
            [0 => ['file', '/dev/null', 'r'], 1 => ['file', $out, 'w'], 2 => ['redirect', 1]], $pipes, null, self::m()->env($withExtension));
        $pid = proc_get_status($proc)['pid'];
        $claims = $registered = [];
        $pdo = self::m()->pdo();
        $hasRegistry = $this->hasTable('matomo_archive_claim_process');
        while (($status = proc_get_status($proc))['running']) {
            foreach ($pdo->query('SELECT processing_host, process_id FROM matomo_archive_invalidations WHERE status = 1') as $r) {
                $key = ($r['processing_host'] ?? 'NULL') . ' pid ' . ($r['process_id'] ?? 'NULL');
                $claims[$key] = ($claims[$key] ?? 0) + 1;
            }
            if ($hasRegistry) {
                foreach ($pdo->query('SELECT pid FROM matomo_archive_claim_process')->fetchAll(\PDO::FETCH_COLUMN) as $p) {
                    $registered[(int) $p] = true;
                }
            }
            usleep(3000);
        }
        $code = $status['exitcode'];
        proc_close($proc);
        $output = (string) file_get_contents($out);
        unlink($out);
        return ['code' => $code, 'output' => $output, 'pid' => $pid, 'seconds' => microtime(true) - $t, 'claims' => $claims,
            'registered' => $registered];
    }

    public function testThePluginActivatesOnMatomo52AndInstallsItsSchema(): void
    {
        $this->assertStringNotContainsString('processing_host', self::$table52, 'Matomo 5.2 lacks 5.3\'s columns');
        // Activated with a PHP that lacks the extension (say, the web server's): the plugin's
        // own SQL installs the schema.
        [$code, $out] = self::m()->console(['plugin:activate', 'ArchiveClaim'], false);
        $this->assertSame(0, $code, $out);
        $this->assertStringContainsString('Activated plugin ArchiveClaim', $out);
        $this->assertSame([], $this->failures($out));

        $this->assertContains('processing_host', $this->columns('matomo_archive_invalidations'));
        $this->assertContains('process_id', $this->columns('matomo_archive_invalidations'));
        $this->assertContains('index_archive_claim_status_host', $this->indexes('matomo_archive_invalidations'));
        $this->assertTrue($this->hasTable('matomo_archive_claim_process'), 'the process registry');
        $this->assertStringContainsString('ArchiveClaim: schema added column processing_host VARCHAR(100) NULL DEFAULT NULL; '
            . 'added column process_id VARCHAR(15) NULL DEFAULT NULL; added index index_archive_claim_status_host (status, processing_host); '
            . 'created table matomo_archive_claim_process (the process registry)', self::m()->log());

        // What the plugin's SQL made is exactly what the extension's install_schema() makes
        // from the same 5.2 table (the definitions live in two languages: this keeps them one).
        $twin = 'e2e_twin_' . getmypid();
        $admin = TestDatabase::admin();
        $admin->exec("CREATE DATABASE `$twin`");
        try {
            TestDatabase::admin($twin)->exec(self::$table52);
            configure(['dbname' => $twin] + self::m()->database());
            $report = install_schema(['index' => true]);
            $this->assertCount(4, $report['changes'], implode('; ', $report['changes']));
            foreach (['matomo_archive_invalidations', 'matomo_archive_claim_process'] as $table) {
                $theirs = preg_replace('/ AUTO_INCREMENT=\d+/', '', TestDatabase::admin($twin)->query("SHOW CREATE TABLE `$table`")->fetch(\PDO::FETCH_NUM)[1]);
                $this->assertSame($theirs, self::createTable($table), "$table: the plugin's SQL and install_schema() differ");
            }
        } finally {
            $admin->exec("DROP DATABASE `$twin`");
        }

        // Activating again (with the extension this time) changes nothing and says so.
        [$code] = self::m()->console(['plugin:deactivate', 'ArchiveClaim']);
        $this->assertSame(0, $code);
        [$code, $out] = self::m()->console(['plugin:activate', 'ArchiveClaim']);
        $this->assertSame(0, $code, $out);
        $this->assertSame(self::$checksum, self::m()->coreChecksum(), 'no file of Matomo was edited');
    }

    /** @depends testThePluginActivatesOnMatomo52AndInstallsItsSchema */
    public function testCoreArchiveClaimsNativelyWithNoCoreFileEdited(): void
    {
        [$code, $out] = self::m()->console(['core:invalidate-report-data', '--dates=2024-01-01,2024-01-03', '--sites=1,2']);
        $this->assertSame(0, $code, $out);
        $queued = count($this->invalidations('idsite IN (1, 2)'));
        $this->assertGreaterThan(6, $queued);

        $run = $this->archiveWatched(true);
        self::$figures['core:archive with the extension, 2 sites x 3 days'] = sprintf('%.1f s', $run['seconds']);
        $this->assertSame(0, $run['code'], $run['output']);
        $this->assertSame([], $this->failures($run['output']), 'nothing logged a warning or an error');
        $this->assertStringContainsString("ArchiveClaim: core:archive pid {$run['pid']} on " . gethostname() . ' registered', $run['output']);
        $this->assertSame([], $this->invalidations('idsite IN (1, 2)'), 'every invalidation archived and deleted');
        // Matomo 5.2's own claim writes neither column: what we saw was written by the extension.
        $this->assertSame([gethostname() . " pid {$run['pid']}"], array_keys($run['claims']),
            'every claim seen in progress carried this host and the core:archive pid');
        $children = array_diff(array_keys($run['registered']), [$run['pid']]);
        $this->assertNotEmpty($children, 'climulti:request children registered while they archived');
        $this->assertSame([], self::m()->pdo()->query('SELECT pid FROM matomo_archive_claim_process')->fetchAll(\PDO::FETCH_COLUMN),
            'core:archive and its children unregistered when done');
        $this->assertSame(self::$checksum, self::m()->coreChecksum(), 'no file of Matomo was edited');
    }

    /** @depends testThePluginActivatesOnMatomo52AndInstallsItsSchema */
    public function testWithoutTheExtensionCoreArchiveIsMatomosOwnAndExitsZero(): void
    {
        self::m()->console(['core:invalidate-report-data', '--dates=2024-01-02', '--sites=1,2']);
        $run = $this->archiveWatched(false);
        self::$figures['core:archive without the extension, 2 sites x 1 day'] = sprintf('%.1f s', $run['seconds']);
        $this->assertSame(0, $run['code'], $run['output']);
        $this->assertSame([], $this->failures($run['output']));
        $notes = preg_grep('/matomo_archive_claim PHP extension is not loaded/', explode("\n", $run['output']));
        $this->assertCount(1, $notes, 'said once');
        $this->assertMatchesRegularExpression('/^NOTICE\b/', (string) current($notes), 'a notice, not a warning');
        $this->assertSame(['NULL pid NULL'], array_keys($run['claims']), 'Matomo 5.2\'s own claim statement (no owner columns written)');
        $this->assertSame([], $this->invalidations('idsite IN (1, 2)'));
    }

    /**
     * Runs tests/support/matomo-model.php: the Model Matomo's container hands to core:archive,
     * driven step by step.
     */
    private function model(array $steps, array $config = [], bool $withExtension = true): array
    {
        [$code, $out] = self::m()->php([__DIR__ . '/../support/matomo-model.php', self::m()->root,
            json_encode(['steps' => $steps, 'config' => (object) $config])], $withExtension);
        $this->assertSame(0, $code, $out);
        $lines = explode("\n", trim($out));
        return json_decode(end($lines), true, flags: JSON_THROW_ON_ERROR);
    }

    /** @depends testThePluginActivatesOnMatomo52AndInstallsItsSchema */
    public function testTheModelClaimsNativelyAndTreatsRowsNotOursAsMatomoDoes(): void
    {
        $host = gethostname();
        $finished = $this->queueRow([]);
        $duplicate = $this->queueRow(['date1' => '2024-02-06', 'date2' => '2024-02-06']);
        $stock = $this->queueRow(['date1' => '2024-02-07', 'date2' => '2024-02-07']);
        $failed = $this->queueRow(['date1' => '2024-02-08', 'date2' => '2024-02-08']);
        $stolen = $this->queueRow(['date1' => '2024-02-09', 'date2' => '2024-02-09']);
        $this->claimAs($stock, 'server9', '77');

        $r = $this->model([
            ['startArchive', $finished], ['sql', "SELECT CONCAT(processing_host, ' ', process_id) FROM matomo_archive_invalidations WHERE idinvalidation = $finished"],
            ['deleteInvalidations', [$finished]],
            ['deleteInvalidations', [$duplicate]],
            ['releaseInProgressInvalidation', $stock],
            ['startArchive', $failed], ['releaseInProgressInvalidation', $failed],
            ['startArchive', $stolen],
            // A reaper released it meanwhile and another archiver claimed it:
            ['sql', "UPDATE matomo_archive_invalidations SET processing_host = 'server9', process_id = '5', ts_started = NOW() WHERE idinvalidation = $stolen"],
            ['deleteInvalidations', [$stolen]],
            ['startArchive', $stolen],
        ]);
        $this->assertSame('Piwik\Plugins\ArchiveClaim\ClaimingModel', $r['model'], 'Matomo\'s container hands out our Model');
        $this->assertTrue($r['results'][0]);
        $this->assertSame("$host {$r['pid']}", $r['results'][1], 'the claim recorded this host and pid');
        $rows = array_column($this->invalidations("idinvalidation IN ($finished, $duplicate, $stock, $failed, $stolen)"), null, 'idinvalidation');
        $this->assertArrayNotHasKey($finished, $rows, 'finished: deleted');
        $this->assertArrayNotHasKey($duplicate, $rows, 'a queued duplicate: deleted, as Matomo deletes it');
        $this->assertSame([0, null], [(int) $rows[$stock]['status'], $rows[$stock]['ts_started']], 'not ours: Matomo 5.2\'s own release');
        $this->assertSame([0, null, null], [(int) $rows[$failed]['status'], $rows[$failed]['processing_host'], $rows[$failed]['ts_started']],
            'our failed request: released');
        $this->assertSame([1, 'server9', '5'], [(int) $rows[$stolen]['status'], $rows[$stolen]['processing_host'], $rows[$stolen]['process_id']],
            'no longer ours: left to its new owner');
        $this->assertFalse(end($r['results']), 'and not claimed over it');
        $log = implode("\n", array_column($r['log'], 1));
        $this->assertStringContainsString("1 of invalidations $stolen finished by pid {$r['pid']} were no longer its claims", $log);
        $this->assertStringContainsString("pid {$r['pid']} gave back invalidations $failed after a failed archiving request (1 released)", $log);
        self::m()->pdo()->exec("DELETE FROM matomo_archive_invalidations WHERE idinvalidation IN ($stock, $failed, $stolen)");
    }

    /** @depends testThePluginActivatesOnMatomo52AndInstallsItsSchema */
    public function testTakeOverPastTheRecoveryTimeoutAndTheRunsResetUseMatomosTimeouts(): void
    {
        $host = gethostname();
        $old = $this->queueRow([]);
        $recent = $this->queueRow(['date1' => '2024-02-06', 'date2' => '2024-02-06']);
        $this->claimAs($old, 'server9', '78', 'NOW() - INTERVAL 2 HOUR');
        $this->claimAs($recent, 'server9', '79', 'NOW() - INTERVAL 10 MINUTE');
        $r = $this->model([['startArchive', $old], ['startArchive', $recent]], ['General_2' => ['archive_failure_recovery_timeout' => 3600]]);
        $this->assertSame([true, false], $r['results'], 'taken over past [General_2] archive_failure_recovery_timeout only');
        $rows = array_column($this->invalidations("idinvalidation IN ($old, $recent)"), null, 'idinvalidation');
        $this->assertSame([$host, (string) $r['pid']], [$rows[$old]['processing_host'], $rows[$old]['process_id']], 'taken over natively');
        $this->assertSame('server9', $rows[$recent]['processing_host']);
        self::m()->pdo()->exec("DELETE FROM matomo_archive_invalidations WHERE idinvalidation IN ($old, $recent)");

        // resetFailedArchivingJobs(), at the start of each run: proof of death now, Matomo's timeouts as the backstop.
        $dead = $this->queueRow(['idsite' => 1]);
        $pastTimeout = $this->queueRow(['idsite' => 2]);
        $slowSite = $this->queueRow(['idsite' => 3]);
        $live = $this->queueRow(['idsite' => 2, 'date1' => '2024-02-06', 'date2' => '2024-02-06']);
        $this->claimAs($dead, $host, (string) $this->goneLocalPid());
        $this->claimAs($pastTimeout, 'server9', '80', 'NOW() - INTERVAL 2 HOUR');
        $this->claimAs($slowSite, 'server9', '81', 'NOW() - INTERVAL 2 HOUR');
        $this->claimAs($live, 'server9', '82');
        $r = $this->model([['resetFailedArchivingJobs']], ['General' => ['archive_failure_recovery_timeout' => 3600],
            'General_3' => ['archive_failure_recovery_timeout' => 10800]]);
        $this->assertSame([2], $r['results']);
        $status = array_column($this->invalidations("idinvalidation IN ($dead, $pastTimeout, $slowSite, $live)"), 'status', 'idinvalidation');
        $this->assertSame([$dead => 0, $pastTimeout => 0, $slowSite => 1, $live => 1], array_map('intval', $status));
        $log = implode("\n", array_column($r['log'], 1));
        $this->assertMatchesRegularExpression("/ArchiveClaim: core:archive pid {$r['pid']} re-queued invalidation $dead \\(site 1, period 1, 2024-02-05..2024-02-05\\) held by "
            . preg_quote($host, '/') . ' pid \d+ for \d+ s: dead, pid_gone/', $log);
        $this->assertStringContainsString("re-queued invalidation $pastTimeout (site 2", $log);
        self::m()->pdo()->exec("DELETE FROM matomo_archive_invalidations WHERE idinvalidation IN ($dead, $pastTimeout, $slowSite, $live)");
    }

    /** @depends testThePluginActivatesOnMatomo52AndInstallsItsSchema */
    public function testStatusAndReapCommands(): void
    {
        $host = gethostname();
        $dead = $this->queueRow(['idsite' => 1, 'report' => 'Goals']);
        $remote = $this->queueRow(['idsite' => 2]);
        $this->claimAs($dead, $host, (string) $this->goneLocalPid(), 'NOW() - INTERVAL 10 MINUTE');
        $this->claimAs($remote, 'server2', '42');

        [$code, $out] = self::m()->console(['archiveclaim:status']);
        $this->assertSame(3, $code, "exit code 3: some rows are dead\n$out");
        $this->assertStringContainsString("$host: 1 in progress (0 alive, 1 dead, 0 unknown)", $out);
        $this->assertStringContainsString('server2: 1 in progress (0 alive, 0 dead, 1 unknown)', $out);
        $this->assertMatchesRegularExpression("/#$dead\\s+site 1\\s+day\\s+2024-02-05..2024-02-05\\s+done \\(Goals\\)\\s+pid \\d+\\s+10m\\s+dead\\s+pid_gone/", $out);

        [$code, $out] = self::m()->console(['archiveclaim:status', '--json', '--processing-host=server2']);
        $this->assertSame(0, $code, $out);
        $data = json_decode($out, true, flags: JSON_THROW_ON_ERROR);
        $this->assertSame(['server2' => ['in_progress' => 1, 'dead' => 0, 'alive' => 0, 'unknown' => 1]], $data['hosts']);

        [$code, $out] = self::m()->console(['archiveclaim:reap', '--dry-run']);
        $this->assertSame(3, $code, $out);
        $this->assertStringContainsString('Dry run: 1 of 2 in-progress invalidations would be released', $out);
        $this->assertSame(1, (int) $this->invalidations("idinvalidation = $dead")[0]['status'], 'a dry run changes nothing');

        [$code, $out] = self::m()->console(['archiveclaim:reap', '--newer-than=not a time']);
        $this->assertSame(2, $code, $out);
        $this->assertStringContainsString('--newer-than', $out);

        [$code, $out] = self::m()->console(['archiveclaim:reap']);
        $this->assertSame(0, $code, $out);
        $this->assertStringContainsString('(dead, pid_gone): reset', $out);
        $this->assertStringContainsString('1 of 2 in-progress invalidations released (1 re-queued, 0 deleted as duplicates); 1 kept.', $out);
        $this->assertSame(1, (int) $this->invalidations("idinvalidation = $remote")[0]['status'], 'server2 proves nothing from here');

        [$code, $out] = self::m()->console(['archiveclaim:reap', '--processing-host=server2', '--force']);
        $this->assertSame(0, $code, $out);
        $this->assertStringContainsString('(dead, host_declared_dead): reset', $out);
        $this->assertSame(0, (int) $this->invalidations("idinvalidation = $remote")[0]['status']);

        [$code, $out] = self::m()->console(['archiveclaim:status'], false);
        $this->assertSame(1, $code, 'without the extension the operator commands cannot work, and say why');
        $this->assertStringContainsString('matomo_archive_claim PHP extension is not loaded', $out);
        self::m()->pdo()->exec("DELETE FROM matomo_archive_invalidations WHERE idinvalidation IN ($dead, $remote)");
    }
}
