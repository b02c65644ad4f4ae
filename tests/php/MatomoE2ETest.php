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
    private const LIGHT_DAY = '2024-01-16';

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
        return self::m()->queueRow($row);
    }

    private function claimAs(int $id, string $host, string $pid, string $started = 'NOW()'): void
    {
        self::m()->claimAs($id, $host, $pid, $started);
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
            . 'added column process_id VARCHAR(15) NULL DEFAULT NULL; added index index_archive_claim_status_host (status, processing_host, process_id, ts_started, idsite, date1, date2, period); '
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
            $this->assertCount(6, $report['changes'], implode('; ', $report['changes']));
            foreach (['matomo_archive_invalidations', 'matomo_archive_claim_process', 'matomo_archive_claim_load', 'matomo_archive_claim_duration'] as $table) {
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
        // Detached climulti:request children register at their first beat, an interval after
        // they start (the children of this short run mostly end before: they cost nothing); the
        // kill tests below show a child that outlives its parent keeping the claim.
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
     * Activation creates everything the extension writes to, so an archiver whose database user
     * may only read and write rows (no CREATE, no ALTER) still claims natively.
     *
     * @depends testThePluginActivatesOnMatomo52AndInstallsItsSchema
     */
    public function testArchiversNeedNoCreatePrivilege(): void
    {
        $m = self::m();
        $admin = TestDatabase::admin();
        $user = 'e2e_archiver_' . getmypid();
        $admin->exec("CREATE USER '$user'@'%' IDENTIFIED BY 'archiver-pw'");
        // What archiving needs from Matomo's side for months whose archive tables exist.
        $admin->exec("GRANT SELECT, INSERT, UPDATE, DELETE, CREATE TEMPORARY TABLES, LOCK TABLES ON `{$m->db}`.* TO '$user'@'%'");
        $config = "$m->root/config/config.ini.php";
        $original = file_get_contents($config);
        try {
            $m->setConfig('database', 'username', "\"$user\"");
            $m->setConfig('database', 'password', '"archiver-pw"');
            $m->console(['core:invalidate-report-data', '--dates=2024-01-03', '--sites=1,2', '--periods=day']);
            $run = $this->archiveWatched(true);
        } finally {
            file_put_contents($config, $original);
            $admin->exec("DROP USER '$user'@'%'");
        }
        $this->assertSame(0, $run['code'], $run['output']);
        $this->assertSame([], $this->failures($run['output']));
        $this->assertStringNotContainsString('ArchiveClaim: cannot register', $run['output']);
        $this->assertStringNotContainsString('claiming through the extension failed', $run['output']);
        $this->assertSame([gethostname() . " pid {$run['pid']}"], array_keys($run['claims']), 'claims recorded natively');
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

        // Matomo 5.3's releaseInProgressInvalidations() (5.2 has only the singular): ours fenced, the rest Matomo's.
        [$mine, $theirs] = [$this->queueRow([]), $this->queueRow(['date1' => '2024-02-06', 'date2' => '2024-02-06'])];
        $this->claimAs($theirs, 'server9', '77');
        $r = $this->model([['startArchive', $mine], ['releaseInProgressInvalidations', [$mine, $theirs]]]);
        $this->assertSame([true, 2], $r['results']);
        $this->assertSame([0, 0], array_map('intval', array_column($this->invalidations("idinvalidation IN ($mine, $theirs)"), 'status')));
        self::m()->pdo()->exec("DELETE FROM matomo_archive_invalidations WHERE idinvalidation IN ($mine, $theirs)");
    }

    /** @depends testThePluginActivatesOnMatomo52AndInstallsItsSchema */
    public function testSettingsTheExtensionRefusesLeaveMatomoArchivingAsBefore(): void
    {
        $id = $this->queueRow([]);
        // Half a client identity (a key without its certificate) is refused. Matomo's own
        // connection is already open.
        $r = $this->model([['startArchive', $id], ['deleteInvalidations', [$id]]], ['database' => ['enable_ssl' => 1, 'ssl_key' => '/etc/ssl/client-key.pem']]);
        $this->assertSame([true, null], $r['results'], 'claimed and finished by Matomo\'s own statements');
        $this->assertSame([], $this->invalidations("idinvalidation = $id"));
        $this->assertSame([], array_filter($r['log'], fn ($l) => in_array($l[0], ['warning', 'error'], true)), 'nothing that fails a run');
        $notes = array_filter($r['log'], fn ($l) => str_contains($l[1], "cannot use Matomo's [database] settings"));
        $this->assertCount(1, $notes, 'said once');
        $this->assertSame('notice', current($notes)[0]);
        $this->assertStringContainsString('archiving continues with Matomo\'s own claims', current($notes)[1]);
    }

    /** @depends testThePluginActivatesOnMatomo52AndInstallsItsSchema */
    public function testTakeOverPastTheRecoveryTimeoutAndTheRunsResetUseMatomosTimeouts(): void
    {
        $host = gethostname();
        $old = $this->queueRow([]);
        $recent = $this->queueRow(['date1' => '2024-02-06', 'date2' => '2024-02-06']);
        $this->claimAs($old, 'server9', '78', 'NOW() - INTERVAL 2 HOUR');
        $this->claimAs($recent, 'server9', '79', 'NOW() - INTERVAL 10 MINUTE');
        // Looked at while the process still holds it: at its end it gives back what it did not finish.
        $r = $this->model([['startArchive', $old], ['startArchive', $recent],
            ['sql', "SELECT CONCAT(processing_host, ' ', process_id) FROM matomo_archive_invalidations WHERE idinvalidation = $old"]],
            ['General_2' => ['archive_failure_recovery_timeout' => 3600]]);
        $this->assertSame([true, false], array_slice($r['results'], 0, 2), 'taken over past [General_2] archive_failure_recovery_timeout only');
        $this->assertSame("$host {$r['pid']}", $r['results'][2], 'taken over natively');
        $rows = array_column($this->invalidations("idinvalidation IN ($old, $recent)"), null, 'idinvalidation');
        $this->assertSame([0, null], [(int) $rows[$old]['status'], $rows[$old]['processing_host']], 'given back when the process ended unfinished');
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

    /**
     * The sites of released rows are appended to Matomo's shared site queue: never into a queue
     * that does not exist (the next run builds a full one), never twice, never reordering or
     * removing what a live run's queue holds, and the queue's reset time (which stops the runs
     * on it when it changes) untouched.
     *
     * @depends testThePluginActivatesOnMatomo52AndInstallsItsSchema
     */
    public function testReleasedSitesAreAppendedToMatomosSharedSiteQueueOnly(): void
    {
        $dead = $this->queueRow(['idsite' => 1]);
        $pid = (string) $this->goneLocalPid();
        $host = gethostname();
        $q = self::SITE_QUEUE;
        $setQueue = fn (?string $v) => ['sql', $v === null ? "DELETE FROM matomo_option WHERE option_name = '$q'"
            : "REPLACE INTO matomo_option (option_name, option_value, autoload) VALUES ('$q', '$v', 0)"];
        $claimDead = ['sql', "UPDATE matomo_archive_invalidations SET status = 1, processing_host = '$host', process_id = '$pid', ts_started = NOW() WHERE idinvalidation = $dead"];
        $read = ['sql', "SELECT CONCAT('[', IFNULL((SELECT option_value FROM matomo_option WHERE option_name = '$q'), 'none'), ']',
            IFNULL((SELECT option_value FROM matomo_option WHERE option_name = '{$q}_ResetQueueTime'), 'none'))"];
        self::m()->pdo()->exec("REPLACE INTO matomo_option (option_name, option_value, autoload) VALUES ('{$q}_ResetQueueTime', '1700000000000', 0)");
        $r = $this->model([
            $setQueue('3,2'), $claimDead, ['resetFailedArchivingJobs'], $read,
            $setQueue('1,3'), $claimDead, ['resetFailedArchivingJobs'], $read,
            $setQueue(null), $claimDead, ['resetFailedArchivingJobs'], $read,
        ]);
        $this->assertSame(['[3,2,1]1700000000000', '[1,3]1700000000000', '[none]1700000000000'],
            [$r['results'][3], $r['results'][7], $r['results'][11]], 'appended to a queue that lacked it; otherwise unchanged');
        $this->assertSame([1, 1, 1], [$r['results'][2], $r['results'][6], $r['results'][10]], 'the dead claim was released each time');
        $log = implode("\n", array_column($r['log'], 1));
        $this->assertSame(1, substr_count($log, "ArchiveClaim: core:archive pid {$r['pid']} put site 1 back into Matomo's shared site queue"), $log);
        $this->assertSame([], array_filter($r['log'], fn ($l) => in_array($l[0], ['warning', 'error'], true)));
        $pdo = self::m()->pdo();
        $pdo->exec("DELETE FROM matomo_option WHERE option_name IN ('$q', '{$q}_ResetQueueTime')");
        $pdo->exec("DELETE FROM matomo_archive_invalidations WHERE idinvalidation = $dead");
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
        // (Long-running too where earlier tests left a history of days that took seconds.)
        $this->assertMatchesRegularExpression('/' . preg_quote($host, '/') . ': 1 in progress \(0 alive, 1 dead, 0 unknown(, 1 long-running)?\)/', $out);
        $this->assertStringContainsString('server2: 1 in progress (0 alive, 0 dead, 1 unknown)', $out);
        $this->assertMatchesRegularExpression("/#$dead\\s+site 1\\s+day\\s+2024-02-05..2024-02-05\\s+done \\(Goals\\)\\s+pid \\d+\\s+10m\\s+dead\\s+pid_gone/", $out);

        [$code, $out] = self::m()->console(['archiveclaim:status', '--json', '--processing-host=server2']);
        $this->assertSame(0, $code, $out);
        $data = json_decode($out, true, flags: JSON_THROW_ON_ERROR);
        $this->assertSame(['server2' => ['in_progress' => 1, 'dead' => 0, 'alive' => 0, 'unknown' => 1, 'long_running' => 0]], $data['hosts']);

        [$code, $out] = self::m()->console(['archiveclaim:reap', '--dry-run']);
        $this->assertSame(3, $code, $out);
        $this->assertStringContainsString('Dry run: 1 of 2 in-progress invalidations would be released', $out);
        $this->assertSame(1, (int) $this->invalidations("idinvalidation = $dead")[0]['status'], 'a dry run changes nothing');

        [$code, $out] = self::m()->console(['archiveclaim:reap', '--newer-than=not a time']);
        $this->assertSame(2, $code, $out);
        $this->assertStringContainsString('--newer-than', $out);

        // A run's site queue is there (site 3 not taken yet): the operator's reap adds the released site.
        self::m()->pdo()->exec("REPLACE INTO matomo_option (option_name, option_value, autoload) VALUES ('" . self::SITE_QUEUE . "', '3', 0)");
        [$code, $out] = self::m()->console(['archiveclaim:reap']);
        $this->assertSame(0, $code, $out);
        $this->assertStringContainsString('(dead, pid_gone): reset', $out);
        $this->assertStringContainsString("Put site 1 back into Matomo's shared site queue.", $out);
        $this->assertSame('3,1', $this->siteQueue());
        self::m()->pdo()->exec("DELETE FROM matomo_option WHERE option_name = '" . self::SITE_QUEUE . "'");
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

    /**
     * PHP processes of this test's Matomo whose command line contains all of $needles (the
     * `sh -c` wrappers CliMulti starts them with are left out). Other checkouts' suites may run
     * the same sites and days on this machine at the same time: their archivers are neither
     * counted nor killed.
     *
     * @return array<int, string> pid => command line
     */
    private static function processes(string ...$needles): array
    {
        // CliMulti names the console by Matomo's resolved path (PIWIK_INCLUDE_PATH).
        $needles[] = (realpath(self::m()->root) ?: self::m()->root) . '/console ';
        $found = [];
        foreach (glob('/proc/[0-9]*/cmdline') as $file) {
            $argv = explode("\0", rtrim((string) @file_get_contents($file), "\0"));
            $cmd = implode(' ', $argv);
            if (!str_starts_with(basename($argv[0]), 'php')) {
                continue;
            }
            foreach ($needles as $needle) {
                if (!str_contains($cmd, $needle)) {
                    continue 2;
                }
            }
            $found[(int) basename(dirname($file))] = $cmd;
        }
        return $found;
    }

    private function startConsole(array $args, array $env, ?string $outFile = null, array $prefix = [])
    {
        return proc_open(array_merge($prefix, self::m()->consoleCommand($args)),
            [0 => ['file', '/dev/null', 'r'], 1 => ['file', $outFile ?? '/dev/null', 'w'], 2 => ['redirect', 1]], $pipes, null, $env);
    }

    public static function childModes(): array
    {
        return [
            // A batch of several requests: detached children, `... runid=<parent pid> &`.
            'detached children (runid)' => [true],
            // A batch of one request: CliMulti::executeSyncCli, shell_exec without "&" and no
            // pid/runid in the query; the child's parent is the sh that core:archive started.
            'a batch of one, run synchronously' => [false],
        ];
    }

    /** @return list<int> the ancestors of a process, nearest first */
    private static function ancestors(int $pid): array
    {
        $chain = [];
        while ($pid > 1 && count($chain) < 20) {
            $stat = (string) @file_get_contents("/proc/$pid/stat");
            $pid = (int) (explode(' ', substr($stat, (int) strrpos($stat, ')') + 2))[1] ?? 0);
            $chain[] = $pid;
        }
        return $chain;
    }

    /** A day of site HEAVY_SITE that takes its child seconds to archive (and a light day beside it), made once. */
    private static function heavyDay(): void
    {
        if (!isset(self::$figures['heavy day'])) {
            $m = self::m();
            $t = microtime(true);
            $m->trackVisits(self::HEAVY_SITE, self::HEAVY_DAY, 500);
            $visits = $m->multiplyVisits(self::HEAVY_SITE, self::HEAVY_DAY, 7);
            $m->copyVisits(self::HEAVY_SITE, self::HEAVY_DAY, self::LIGHT_DAY, 20);
            self::$figures['heavy day'] = sprintf('%d visits on %s (500 tracked, copied in SQL), ready in %.1f s', $visits, self::HEAVY_DAY, microtime(true) - $t);
        }
    }

    /**
     * The rule (design section 4): Matomo's claim is the core:archive parent's, but the work runs
     * in its climulti:request child. While that child lives the claim is alive, even with the
     * parent killed; when it ends, the claim is an orphan and is re-queued. Meanwhile no second
     * run may archive the same day.
     *
     * @depends testThePluginActivatesOnMatomo52AndInstallsItsSchema
     * @dataProvider childModes
     */
    public function testKillingCoreArchiveWhileItsChildArchivesKeepsTheClaimUntilTheChildEnds(bool $detached): void
    {
        $m = self::m();
        self::heavyDay();
        // With the light day beside it, the heavy day is archived in a batch of two.
        [$code, $out] = $m->console(['core:invalidate-report-data', '--dates=' . self::HEAVY_DAY . ($detached ? ',' . self::LIGHT_DAY : ''),
            '--periods=day', '--sites=' . self::HEAVY_SITE]);
        $this->assertSame(0, $code, $out);
        $mode = $detached ? 'detached child' : 'synchronous child';
        $dayRow = "idsite = " . self::HEAVY_SITE . " AND period = 1 AND date1 = '" . self::HEAVY_DAY . "'";
        $ids = array_column($this->invalidations($dayRow), 'idinvalidation');
        $this->assertNotEmpty($ids);
        $dayChild = 'idSite=' . self::HEAVY_SITE . '&period=day&date=' . self::HEAVY_DAY;

        // Another archiver on this host, idle: its heartbeat thread reaps on its own.
        $watcher = proc_open([PHP_BINARY, '-r', 'Matomo\ArchiveClaim\configure(json_decode($argv[1], true)); Matomo\ArchiveClaim\register_process(); sleep(120);',
            json_encode($m->database())], [0 => ['file', '/dev/null', 'r'], 1 => ['file', '/dev/null', 'w'], 2 => ['file', '/dev/null', 'w']], $p, null, $m->env(true));
        $run2 = null;
        $child = 0;
        try {
            $out1 = tempnam(sys_get_temp_dir(), 'e2e-run1');
            $run1 = $this->startConsole(['core:archive', '--url=http://localhost/'], $m->env(true), $out1);
            $parent = proc_get_status($run1)['pid'];
            $seen = [];
            for ($i = 0; $i < 600 && !$child && proc_get_status($run1)['running']; $i++) {
                $seen += self::processes('climulti:request');
                foreach (self::processes('climulti:request', $dayChild) as $pid => $cmd) {
                    // A detached child's sh is gone at once (no ancestry left); a synchronous one runs under it.
                    if (str_contains($cmd, "runid=$parent") || in_array($parent, self::ancestors($pid), true)) {
                        $child = $pid;
                    }
                }
                usleep(20000);
            }
            $this->assertGreaterThan(0, $child, "core:archive started a child for the heavy day:\n" . file_get_contents($out1)
                . json_encode($this->invalidations('idsite = ' . self::HEAVY_SITE)) . "\nchildren seen:\n" . implode("\n", $seen));
            $this->assertSame($detached, str_contains(self::processes('climulti:request', $dayChild)[$child] ?? '', "runid=$parent"),
                "CliMulti ran the heavy day as a $mode");
            usleep(500000);
            $held = $this->invalidations("$dayRow AND status = 1");
            $this->assertSame([[gethostname(), (string) $parent]], array_map(fn ($r) => [$r['processing_host'], $r['process_id']], $held),
                'the day is claimed by the core:archive parent');
            posix_kill($parent, SIGKILL);
            $killedAt = microtime(true);
            proc_close($run1);

            // A second run right away: it must not archive the day while the child does.
            $out2 = tempnam(sys_get_temp_dir(), 'e2e-run2');
            $run2 = $this->startConsole(['core:archive', '--url=http://localhost/'], $m->env(true), $out2);
            $released = $statusChecked = null;
            // Children on the day seen while the killed run's child still lived: once it is gone
            // and the claim is back in the queue, the second run may take the day at once (a CI
            // run saw it do so between two looks), which is the point, not a second archiver.
            $dayChildrenWhileAlive = [];
            $mostAtOnce = 0;
            $childEnd = null;
            // The dead parent's claim: gone from it once released (whether or not the second run
            // has claimed the day again since).
            $heldByParent = "idinvalidation IN (" . implode(',', $ids) . ") AND status = 1 AND process_id = '$parent'";
            while (microtime(true) - $killedAt < 60) {
                $now = self::processes('climulti:request', $dayChild);
                $mostAtOnce = max($mostAtOnce, count($now));
                $alive = file_exists("/proc/$child") && !str_contains((string) @file_get_contents("/proc/$child/stat"), ') Z ');
                if ($alive) {
                    $dayChildrenWhileAlive += $now;
                }
                $rows = $this->invalidations($heldByParent);
                if ($alive && $statusChecked === null && microtime(true) - $killedAt > 1) {
                    [$code, $statusOut] = $m->console(['archiveclaim:status', '--json', '--idsite=' . self::HEAVY_SITE]);
                    $statusChecked = [$code, $statusOut];
                }
                if ($alive) {
                    if (count($rows) !== count($held)) {
                        $released ??= sprintf('%.1f s after the kill, while the child was still archiving', microtime(true) - $killedAt);
                    }
                } else {
                    $childEnd ??= microtime(true);
                    if (!$rows) {
                        break;
                    }
                }
                usleep(50000);
            }
            $requeuedAt = microtime(true);
            $this->assertNotNull($childEnd, 'the child ended within a minute');
            $childLived = $childEnd - $killedAt;
            self::$figures["kill -9 of core:archive: its $mode archived on for"] = sprintf('%.1f s', $childLived);
            $this->assertGreaterThan(1.0, $childLived, 'the heavy day keeps the child busy after the kill (else this test proves nothing)');
            $this->assertNull($released, 'the claim was released ' . $released);
            $this->assertNotNull($statusChecked);
            // (Only the heavy day's: the light day's child is done, so that claim of the dead parent is an orphan.)
            $status = array_filter(json_decode($statusChecked[1], true)['rows'] ?? [], fn ($r) => in_array($r['idinvalidation'], $ids));
            $this->assertSame(['alive'], array_values(array_unique(array_column($status, 'verdict'))),
                "the operator view calls the parent's claim alive while its child works:\n" . $statusChecked[1]);
            $this->assertSame(1, $mostAtOnce, 'never two archivers on the day at once');
            $this->assertSame([$child], array_keys($dayChildrenWhileAlive), 'no second run archived the day meanwhile');
            $this->assertSame([], $this->invalidations($heldByParent), 'once the child is gone, the orphan goes back to the queue');
            self::$figures["$mode gone to claim re-queued (automatic, heartbeat 1 s)"] = sprintf('%.1f s', $requeuedAt - $childEnd);
            self::$figures["kill -9 to claim re-queued ($mode)"] = sprintf('%.1f s', $requeuedAt - $killedAt);

            $code2 = proc_close($run2);
            $run2 = null;
            $out = (string) file_get_contents($out2);
            unlink($out2);
            $this->assertSame(0, $code2, $out);
            // The second run may archive the day once it is back in the queue (that is the
            // point), never while the killed run's child still did.
            preg_match_all('/\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\][^\n]*Archived website id ' . self::HEAVY_SITE . ', period = day, date = '
                . self::HEAVY_DAY . '/', $out, $archived);
            foreach ($archived[1] as $at) {
                $this->assertGreaterThanOrEqual((int) floor($childEnd), strtotime($at . ' UTC'), "the second run archived the day only after the child: $at");
                self::$figures["kill -9 to the day archived again by the running second core:archive ($mode)"] = sprintf('%.0f s (log time, whole seconds)', strtotime($at . ' UTC') - $killedAt);
            }
        } finally {
            foreach (array_keys(self::processes('climulti:request', 'idSite=' . self::HEAVY_SITE . '&')) as $pid) {
                posix_kill($pid, SIGKILL);
            }
            if ($run2) {
                proc_terminate($run2, SIGKILL);
                proc_close($run2);
            }
            proc_terminate($watcher, SIGKILL);
            proc_close($watcher);
            self::m()->pdo()->exec('DELETE FROM matomo_archive_invalidations WHERE idsite = ' . self::HEAVY_SITE);
        }
    }

    /** Matomo's shared site queue (core:archive without --force-idsites): the sites no run has taken yet. */
    private const SITE_QUEUE = 'SharedSiteIdsToArchive_AllWebsites';

    private function siteQueue(): ?string
    {
        $value = self::m()->pdo()->query("SELECT option_value FROM matomo_option WHERE option_name = '" . self::SITE_QUEUE . "'")->fetchColumn();
        return $value === false ? null : (string) $value;
    }

    private static function alive(int $pid): bool
    {
        return file_exists("/proc/$pid") && !str_contains((string) @file_get_contents("/proc/$pid/stat"), ') Z ');
    }

    public static function nextRuns(): array
    {
        return [
            // Started at the kill, so it is at work when the killed run's claim is released.
            'a second core:archive running' => [true],
            // Started once the killed run's child is gone, as cron's next run would be.
            "cron's next core:archive" => [false],
        ];
    }

    /**
     * A run killed mid-run leaves the shared site queue holding the sites it had not reached, and
     * not the one it was on. Runs that continue that queue never come back to that site, so what
     * was released there waited for a run that builds a fresh queue (with hourly cron, an hour
     * later). The plugin puts the released rows' sites back into the queue.
     *
     * @depends testThePluginActivatesOnMatomo52AndInstallsItsSchema
     * @dataProvider nextRuns
     */
    public function testAKilledRunsSiteIsArchivedByTheRunsThatContinueItsSiteQueue(bool $concurrent): void
    {
        $m = self::m();
        $pdo = $m->pdo();
        self::heavyDay();
        if (!isset(self::$figures['heavy days of sites 1 and 2'])) {
            $t = microtime(true);
            $one = $m->copyVisitsToSite(self::HEAVY_SITE, 1, self::HEAVY_DAY, 1);
            $two = $m->copyVisitsToSite(self::HEAVY_SITE, 2, self::HEAVY_DAY, 2);
            self::$figures['heavy days of sites 1 and 2'] = sprintf('%d and %d visits on %s (copied from site %d in SQL), ready in %.1f s',
                $one, $two, self::HEAVY_DAY, self::HEAVY_SITE, microtime(true) - $t);
        }
        // No run is active: a queue an earlier test's run left would make the first run continue it.
        $pdo->exec("DELETE FROM matomo_option WHERE option_name = '" . self::SITE_QUEUE . "'");
        // Site 1's day is what the killed run is on; in the concurrent case site 2's (twice as
        // heavy) keeps the second run at work until after site 1's claim is released.
        [$code, $out] = $m->console(['core:invalidate-report-data', '--dates=' . self::HEAVY_DAY, '--periods=day',
            '--sites=' . ($concurrent ? '1,2' : '1')]);
        $this->assertSame(0, $code, $out);
        $dayChild = 'idSite=1&period=day&date=' . self::HEAVY_DAY;
        $archivedAgain = '/\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\][^\n]*Archived website id 1, period = day, date = ' . self::HEAVY_DAY . '/';
        $label = $concurrent ? 'a second core:archive running' : "cron's next core:archive";
        $logBefore = strlen($m->log());
        $child = 0;
        try {
            $out1 = tempnam(sys_get_temp_dir(), 'e2e-run1');
            $run1 = $this->startConsole(['core:archive', '--url=http://localhost/'], $m->env(true), $out1);
            $parent = proc_get_status($run1)['pid'];
            for ($i = 0; $i < 600 && !$child && proc_get_status($run1)['running']; $i++) {
                foreach (self::processes('climulti:request', $dayChild) as $pid => $cmd) {
                    if (str_contains($cmd, "runid=$parent") || in_array($parent, self::ancestors($pid), true)) {
                        $child = $pid;
                    }
                }
                usleep(20000);
            }
            $this->assertGreaterThan(0, $child, "the first run archives site 1's day:\n" . file_get_contents($out1));
            usleep(500000);
            $this->assertSame('2,3', $this->siteQueue(), 'killed mid-run: sites 2 and 3 still queued, site 1 taken');
            posix_kill($parent, SIGKILL);
            $killedAt = microtime(true);
            proc_close($run1);
            @unlink($out1);
            if (!$concurrent) {
                for ($i = 0; $i < 1200 && self::alive($child); $i++) {
                    usleep(50000);
                }
                self::$figures["kill -9 mid-run: the killed run's child archived site 1's day on for"] = sprintf('%.1f s (then cron\'s next run starts)',
                    microtime(true) - $killedAt);
            }
            // Runs after the kill, one after another as cron starts them, until site 1's day is archived again.
            $found = null;
            for ($n = 1; $n <= 3 && $found === null; $n++) {
                $outN = tempnam(sys_get_temp_dir(), 'e2e-next');
                $code = proc_close($this->startConsole(['core:archive', '--url=http://localhost/'], $m->env(true), $outN));
                $text = (string) file_get_contents($outN);
                unlink($outN);
                $this->assertSame(0, $code, $text);
                $this->assertSame([], $this->failures($text), 'nothing logged a warning or an error');
                if ($n === 1) {
                    $this->assertStringContainsString('Continuing ongoing archiving run by pulling from shared idSite queue', $text,
                        'the first run after the kill continues the killed run\'s queue');
                }
                if (preg_match($archivedAgain, $text, $at)) {
                    $found = [$n, strtotime($at[1] . ' UTC') - $killedAt];
                }
            }
            $this->assertNotNull($found, 'site 1\'s day archived again within three runs');
            self::$figures["kill -9 of core:archive mid-run (site 1 of 3) to its day archived again, $label"] = sprintf(
                '%.0f s (log time, whole seconds), by the %s run after the kill%s', $found[1], ['first', 'second', 'third'][$found[0] - 1],
                $found[0] === 1 ? '' : ' (the first continued the queue without site 1; with hourly cron: an hour more per run)');
            $log = substr($m->log(), $logBefore);
            if (preg_match('/\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[^\]]*\][^\n]*ArchiveClaim: (.*) put site 1 back into Matomo\'s shared site queue/', $log, $back)) {
                self::$figures["kill -9 mid-run to site 1 back in the shared site queue, $label"] = sprintf('%.0f s (log time), by %s',
                    strtotime($back[1] . ' UTC') - $killedAt, preg_replace('/\d+/', 'N', $back[2]));
            }
            // The first run after the kill, or the next: the killed run's claim is released only once no
            // archiving child on this host can still be working for it (on a slow machine the killed
            // run's child may outlive the first run), and a batch-of-one child of a later run counts as
            // such until it registers (unknown/unregistered_child).
            $this->assertLessThanOrEqual(2, $found[0], 'the first or second run after the kill archived site 1\'s day again');
            if ($found[0] === 1) {
                // The first run continues the killed run's queue, which lacks site 1: only the plugin
                // putting it back lets that run archive it. (The second builds a fresh queue.)
                $this->assertMatchesRegularExpression('/ArchiveClaim: .* put site 1 back into Matomo\'s shared site queue/', $log);
            }
            $this->assertSame([], $this->invalidations('idsite IN (1, 2)'));
        } finally {
            foreach (array_keys(self::processes('climulti:request', 'date=' . self::HEAVY_DAY)) as $pid) {
                posix_kill($pid, SIGKILL);
            }
            $pdo->exec('DELETE FROM matomo_archive_invalidations WHERE idsite IN (1, 2)');
        }
    }

    /**
     * Two archiving servers (own host name and pid namespace each) share the Matomo tree and
     * database and drain one queue; server A loses power mid-run. Its claims go back to the
     * queue once its heartbeats are older than the lease, and server B finishes the work.
     *
     * @depends testThePluginActivatesOnMatomo52AndInstallsItsSchema
     */
    public function testTwoServersDrainOneQueueAndOneLosesPower(): void
    {
        if (!SimulatedServer::canIsolate()) {
            $this->markTestSkipped('needs root and unshare --uts --pid --fork --mount-proc for servers with their own host name and pids');
        }
        $m = self::m();
        [$code, $out] = $m->console(['core:invalidate-report-data', '--dates=2024-01-01,2024-01-03', '--sites=1,2,3']);
        $this->assertSame(0, $code, $out);
        // A command run on a simulated server: its own host name and pid namespace.
        $on = fn (string $host) => ['unshare', '--uts', '--pid', '--fork', '--mount-proc', '--kill-child', 'sh', '-c', 'hostname "$0" && exec "$@"', $host];
        $server = fn (string $host, string $outFile) => $this->startConsole(['core:archive', '--url=http://localhost/'], $m->env(true), $outFile, $on($host));
        $outA = tempnam(sys_get_temp_dir(), 'e2e-a');
        $outB = tempnam(sys_get_temp_dir(), 'e2e-b');
        $outWatch = tempnam(sys_get_temp_dir(), 'e2e-watch');
        $a = $server('e2e-server-a', $outA);
        $b = $watchB = null;
        $heldByA = [];
        $doubleClaims = [];
        $sample = function () use (&$doubleClaims): array {
            $rows = $this->invalidations('status = 1');
            $byArchive = [];
            foreach ($rows as $r) {
                $byArchive["{$r['idsite']}/{$r['period']}/{$r['date1']}/{$r['name']}/{$r['report']}"][] = "{$r['processing_host']}:{$r['process_id']}";
            }
            foreach ($byArchive as $key => $owners) {
                if (count($owners) > 1) {
                    $doubleClaims[$key] = $owners;
                }
            }
            return $rows;
        };
        try {
            // A first, B as soon as A works on its first site (the shared site queue gives B the other).
            for ($i = 0; $i < 3000 && !$heldByA; $i++) {
                $heldByA = array_column(array_filter($sample(), fn ($r) => $r['processing_host'] === 'e2e-server-a'), 'idinvalidation');
                usleep(2000);
            }
            $this->assertNotEmpty($heldByA, 'server A claimed work (with its own host name)');
            $b = $server('e2e-server-b', $outB);
            // Server B as the README deploys a fleet: cron's core:archive runs and one long-lived
            // `archive-claim watch`. Only a watch of a lease proves A silent, and once B has
            // archived its share, the rest are A's claims, which no run can take: every later run
            // ends at once, shorter than the lease (a CI run saw 90 s of them prove nothing).
            $watchB = proc_open(array_merge($on('e2e-server-b'),
                [PHP_BINARY, dirname(__DIR__, 2) . '/php/bin/archive-claim', '--config=' . $m->root . '/config/config.ini.php', 'watch']),
                [0 => ['file', '/dev/null', 'r'], 1 => ['file', $outWatch, 'w'], 2 => ['redirect', 1]], $pipes, null, $m->env(true));
            for ($i = 0; $i < 1500 && !array_filter($sample(), fn ($r) => $r['processing_host'] === 'e2e-server-b'); $i++) {
                usleep(2000);
            }
            // Both at work: cut A's power the moment it holds claims.
            $heldByA = [];
            for ($i = 0; $i < 1500 && !$heldByA; $i++) {
                $heldByA = array_column(array_filter($sample(), fn ($r) => $r['processing_host'] === 'e2e-server-a'), 'idinvalidation');
            }
            $this->assertNotEmpty($heldByA, 'server A still had work when B joined');
            // Power loss: unshare dies, --kill-child takes the namespace's init, and with it every process of server A.
            posix_kill(proc_get_status($a)['pid'], SIGKILL);
            $lostAt = microtime(true);
            proc_close($a);
            $back = null;
            $codeB = null;
            $runsB = 1;
            while (microtime(true) - $lostAt < 90) {
                $sample();
                $back ??= $this->invalidations('status = 1 AND idinvalidation IN (' . implode(',', $heldByA) . ')') ? null : microtime(true);
                if ($b !== null && !($st = proc_get_status($b))['running']) {
                    $codeB = $st['exitcode'];
                    proc_close($b);
                    $b = null;
                    $this->assertSame(0, $codeB, (string) file_get_contents($outB));
                }
                if ($b === null && !$this->invalidations('idsite IN (1, 2, 3)')) {
                    break; // all done
                }
                if ($b === null) {
                    // Work is left (A's share of the site queue, A's claims): cron starts B's next run.
                    usleep(500000);
                    $b = $server('e2e-server-b', $outB);
                    $runsB++;
                }
                usleep(20000);
            }
            $this->assertNotNull($back, "server A's claims went back to the queue:\n" . json_encode($this->invalidations())
                . "\nB:\n" . file_get_contents($outB) . "\nB's watch:\n" . file_get_contents($outWatch) . json_encode(self::m()->pdo()->query('SELECT *, NOW(6) FROM matomo_archive_claim_process')->fetchAll(\PDO::FETCH_ASSOC)));
            self::$figures['server A powered off to its claims re-queued (lease 3 s)'] = sprintf('%.1f s', $back - $lostAt);
            self::$figures['server B finished the queue'] = sprintf('%.1f s after the power loss, in %d core:archive run(s)', microtime(true) - $lostAt, $runsB);
            $this->assertSame([], $this->invalidations('idsite IN (1, 2, 3)'), 'server B archived everything, A\'s share included');
            $this->assertSame([], $doubleClaims, 'no archive was claimed twice at once');
            // Who released A's claims is on record: B's run at its start or its heartbeat thread (whose
            // releases the plugin fetches with background_releases()) in Matomo's log, or B's watch
            // in its output.
            $log = self::m()->log();
            $watched = (string) file_get_contents($outWatch);
            foreach ($heldByA as $id) {
                $inMatomo = preg_match("/ArchiveClaim: .*(re-queued|deleted \\(a duplicate of queued work\\)) invalidation $id "
                    . '\\(site \\d+, .*\\) held by e2e-server-a pid \\d+ for \\d+ s: dead, /', $log);
                $byWatch = preg_match("/released #$id \\(site \\d+, .*\\) of e2e-server-a pid \\d+: dead\\//", $watched);
                $this->assertTrue($inMatomo || $byWatch, "the release of invalidation $id is on record:\n$watched");
            }
            self::$figures['server A\'s claims released by'] = $byWatch ? "B's archive-claim watch" : "B's core:archive";
        } finally {
            foreach ([$a, $b, $watchB] as $proc) {
                if (is_resource($proc)) {
                    proc_terminate($proc, SIGKILL);
                    proc_close($proc);
                }
            }
            // The watcher itself too, should anything stand between it and its unshare.
            foreach (glob('/proc/[0-9]*/cmdline') as $file) {
                $cmd = str_replace("\0", ' ', (string) @file_get_contents($file));
                if (str_contains($cmd, 'php/bin/archive-claim') && str_contains($cmd, $m->root . '/config/config.ini.php')) {
                    posix_kill((int) basename(dirname($file)), SIGKILL);
                }
            }
            @unlink($outA);
            @unlink($outB);
            @unlink($outWatch);
        }
    }

    /**
     * An operator who ran 0.1.0 (no install(), on Matomo 5.3 with the columns) gets the registry
     * and the index from Matomo's updater; uninstalling drops them again, never Matomo's columns.
     *
     * @depends testThePluginActivatesOnMatomo52AndInstallsItsSchema
     */
    public function testUpdateFrom010AndUninstall(): void
    {
        $pdo = self::m()->pdo();
        // 0.2.0's registry had no heartbeat counters, nor the heartbeat version of 0.4.0: the
        // update adds them.
        $pdo->exec('ALTER TABLE matomo_archive_claim_process DROP COLUMN beats, DROP COLUMN reap_runs, DROP COLUMN released,
            DROP COLUMN errors, DROP COLUMN last_error, DROP COLUMN heartbeat_version, DROP COLUMN fence_count');
        $pdo->exec("UPDATE matomo_option SET option_value = '0.2.0' WHERE option_name = 'version_ArchiveClaim'");
        [$code, $out] = self::m()->console(['core:update', '--yes']);
        $this->assertSame(0, $code, $out);
        $this->assertSame([], array_diff(['beats', 'reap_runs', 'released', 'errors', 'last_error', 'heartbeat_version', 'fence_count'],
            $this->columns('matomo_archive_claim_process')), "the update added the counters:\n$out");

        $pdo->exec('DROP TABLE matomo_archive_claim_process');
        $pdo->exec('ALTER TABLE matomo_archive_invalidations DROP INDEX index_archive_claim_status_host');
        $pdo->exec("UPDATE matomo_option SET option_value = '0.1.0' WHERE option_name = 'version_ArchiveClaim'");
        $this->assertSame(1, (int) $pdo->query("SELECT COUNT(*) FROM matomo_option WHERE option_name = 'version_ArchiveClaim'")->fetchColumn());

        [$code, $out] = self::m()->console(['core:update', '--yes']);
        $this->assertSame(0, $code, $out);
        $this->assertTrue($this->hasTable('matomo_archive_claim_process'), "the update created the registry:\n$out");
        $this->assertContains('index_archive_claim_status_host', $this->indexes('matomo_archive_invalidations'));
        $this->assertSame('0.4.0', $pdo->query("SELECT option_value FROM matomo_option WHERE option_name = 'version_ArchiveClaim'")->fetchColumn());
        $this->assertSame(self::$checksum, self::m()->coreChecksum(), 'no file of Matomo was edited');

        [$code, $out] = self::m()->console(['plugin:deactivate', 'ArchiveClaim']);
        $this->assertSame(0, $code, $out);
        [$code, $out] = self::m()->console(['plugin:uninstall', 'ArchiveClaim']);
        $this->assertSame(0, $code, $out);
        $this->assertFalse($this->hasTable('matomo_archive_claim_process'), 'the registry is dropped');
        $this->assertNotContains('index_archive_claim_status_host', $this->indexes('matomo_archive_invalidations'));
        $this->assertContains('processing_host', $this->columns('matomo_archive_invalidations'), 'Matomo\'s columns stay');
        $this->assertContains('process_id', $this->columns('matomo_archive_invalidations'));
    }
}
