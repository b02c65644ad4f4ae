<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use Piwik\Config;
use Piwik\Container\StaticContainer;
use Piwik\Log\LoggerInterface;
use Piwik\Log\MemoryLogger;
use Piwik\Plugins\ArchiveClaim\ArchiveClaim;
use Piwik\Plugins\ArchiveClaim\Commands\Reap;
use Piwik\Plugins\ArchiveClaim\Commands\Status;

use function Matomo\ArchiveClaim\unregister_process;

/** The Matomo plugin's event handlers and console commands, on a real database. */
final class PluginTest extends ExtensionTestCase
{
    private MemoryLogger $logger;

    protected function setUp(): void
    {
        parent::setUp();
        $this->logger = new MemoryLogger();
        StaticContainer::$entries[LoggerInterface::class] = $this->logger;
        Config::getInstance()->sections = [
            'database' => $this->config + ['type' => 'InnoDB', 'schema' => 'Mysql', 'enable_ssl' => '0'],
            'General' => ['archive_failure_recovery_timeout' => '86400'],
        ];
    }

    protected function tearDown(): void
    {
        unregister_process();
        parent::tearDown();
    }

    private function registryPids(): array
    {
        return array_map('intval', $this->pdo->query('SELECT pid FROM matomo_archive_claim_process')->fetchAll(\PDO::FETCH_COLUMN));
    }

    public function testTheArchiveRunHooksAreRegistered(): void
    {
        $this->assertSame(['CronArchive.init.start' => 'onCronArchiveStart', 'CronArchive.end' => 'onCronArchiveEnd'],
            (new ArchiveClaim())->registerEvents());
    }

    public function testArchiveStartRegistersReapsWithMatomosTimeoutsAndLogsWhatItReleased(): void
    {
        [$orphan, $oldRemote, $slowSite, $live] = $this->queue([['idsite' => 1], ['idsite' => 2], ['idsite' => 3], ['idsite' => 4]]);
        $this->claimAs($orphan, gethostname(), (string) $this->goneLocalPid());
        $this->claimAs($oldRemote, 'server9', '77', 'NOW() - INTERVAL 2 HOUR');
        $this->claimAs($slowSite, 'server9', '78', 'NOW() - INTERVAL 2 HOUR');
        $this->claimAs($live, 'server9', '79');
        Config::getInstance()->sections['General']['archive_failure_recovery_timeout'] = '3600';
        Config::getInstance()->sections['General_3'] = ['archive_failure_recovery_timeout' => '10800'];

        (new ArchiveClaim())->onCronArchiveStart();

        $this->assertContains(getmypid(), $this->registryPids(), 'the archiving process is registered');
        $this->assertSame(0, (int) $this->row($orphan)['status'], 'pid gone on this host');
        $this->assertSame(0, (int) $this->row($oldRemote)['status'], 'older than [General] timeout');
        $this->assertSame(1, (int) $this->row($slowSite)['status'], '[General_3] gives site 3 three hours');
        $this->assertSame(1, (int) $this->row($live)['status']);
        $messages = array_column($this->logger->records, 1);
        $pattern = '/^ArchiveClaim: re-queued invalidation ' . $orphan . ' \(site 1, period 1, 2026-11-28\) held by '
            . preg_quote(gethostname(), '/') . ' pid \d+ for \d+ s: pid_gone$/';
        $this->assertNotEmpty(preg_grep($pattern, $messages), implode("\n", $messages));
        $this->assertStringContainsString('2 orphaned invalidations released, 2 in progress kept', implode("\n", $messages));

        (new ArchiveClaim())->onCronArchiveEnd();
        $this->assertNotContains(getmypid(), $this->registryPids(), 'unregistered at the end of the run');
    }

    public function testArchiveStartNeverBreaksArchivingOnBadSettings(): void
    {
        Config::getInstance()->sections['database']['tables_prefix'] = 'bad-prefix';
        (new ArchiveClaim())->onCronArchiveStart();
        $this->assertSame('error', $this->logger->records[0][0]);
        $this->assertStringContainsString('tables_prefix', $this->logger->records[0][1]);
        $this->assertStringContainsString('archiving continues', $this->logger->records[0][1]);
    }

    public function testWithoutTheExtensionThePluginSaysSoOnceAndStepsAside(): void
    {
        $code = 'require ' . var_export(__DIR__ . '/../support/matomo-stand-ins.php', true) . ';
            $log = new Piwik\Log\MemoryLogger();
            Piwik\Container\StaticContainer::$entries[Piwik\Log\LoggerInterface::class] = $log;
            $plugin = new Piwik\Plugins\ArchiveClaim\ArchiveClaim();
            $plugin->onCronArchiveStart(); $plugin->onCronArchiveStart(); $plugin->onCronArchiveEnd();
            echo json_encode($log->records);';
        $proc = proc_open([PHP_BINARY, '-r', $code], [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
        $out = stream_get_contents($pipes[1]);
        $err = stream_get_contents($pipes[2]);
        $this->assertSame(0, proc_close($proc), $err);
        $records = json_decode($out, true);
        $this->assertCount(1, $records, 'said once');
        $this->assertSame('warning', $records[0][0]);
        $this->assertStringContainsString('matomo_archive_claim PHP extension is not loaded', $records[0][1]);
    }

    public function testStatusGroupsRowsByHostWithVerdicts(): void
    {
        [$a, $b, $c] = $this->queue([['idsite' => 1, 'report' => 'Goals'], ['idsite' => 2], ['idsite' => 3]]);
        $this->claimAs($a, 'server2', '41', 'NOW() - INTERVAL 10 MINUTE');
        $this->claimAs($b, 'server2', '42');
        $this->claimAs($c, gethostname(), (string) $this->goneLocalPid());

        [$code, $out] = (new Status())->run([]);
        $this->assertSame(3, $code, 'exit code 3: some rows are dead');
        $this->assertStringContainsString('server2: 2 in progress (0 alive, 0 dead, 2 unknown)', $out);
        $this->assertStringContainsString(gethostname() . ': 1 in progress (0 alive, 1 dead, 0 unknown)', $out);
        $this->assertMatchesRegularExpression("/#$a\\s+site 1\\s+day\\s+2026-11-28..2026-11-28\\s+done \\(Goals\\)\\s+pid 41\\s+10m\\s+unknown\\s+remote_unregistered/", $out);

        [$code, $json] = (new Status())->run(['json' => true, 'processing-host' => ['server2']]);
        $this->assertSame(0, $code);
        $data = json_decode($json, true, flags: JSON_THROW_ON_ERROR);
        $this->assertSame(['server2' => ['in_progress' => 2, 'dead' => 0, 'alive' => 0, 'unknown' => 2]], $data['hosts']);
        $this->assertSame([$a, $b], array_column($data['rows'], 'idinvalidation'));
    }

    public function testReapReleasesOnlyProvenOrphansUnlessForced(): void
    {
        [$dead, $remote] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $this->claimAs($dead, gethostname(), (string) $this->goneLocalPid());
        $this->claimAs($remote, 'server2', '42');
        $checksum = $this->tableChecksum();

        [$code, $out] = (new Reap())->run(['dry-run' => true]);
        $this->assertSame(3, $code, 'exit code 3: a dry run found something to release');
        $this->assertStringContainsString('1 of 2 in-progress invalidations would be released', $out);
        $this->assertSame($checksum, $this->tableChecksum());

        [$code, $out] = (new Reap())->run([]);
        $this->assertSame(0, $code);
        $this->assertStringContainsString("#$dead site 1", $out);
        $this->assertStringContainsString('(dead, pid_gone): reset', $out);
        $this->assertStringContainsString('1 of 2 in-progress invalidations released (1 re-queued, 0 deleted as duplicates); 1 kept.', $out);
        $this->assertSame(1, (int) $this->row($remote)['status'], 'server2 proves nothing from here');

        [$code, $out] = (new Reap())->run(['processing-host' => ['server2'], 'force' => true]);
        $this->assertSame(0, $code);
        $this->assertStringContainsString('(dead, host_declared_dead): reset', $out);
        $this->assertSame(0, (int) $this->row($remote)['status']);
    }

    public function testReapTakesResetInvalidationsFilters(): void
    {
        [$old, $new, $otherSite] = $this->queue([['idsite' => 1], ['idsite' => 1, 'date1' => '2026-11-27', 'date2' => '2026-11-27'], ['idsite' => 2]]);
        $this->claimAs($old, 'server2', '1', 'UTC_TIMESTAMP() - INTERVAL 3 HOUR');
        $this->claimAs($new, 'server2', '2', 'UTC_TIMESTAMP() - INTERVAL 10 MINUTE');
        $this->claimAs($otherSite, 'server2', '3', 'UTC_TIMESTAMP() - INTERVAL 3 HOUR');

        [$code, $out] = (new Reap())->run(['processing-host' => ['server2'], 'idsite' => ['1'], 'older-than' => '1 hour ago', 'force' => true]);
        $this->assertSame(0, $code, $out);
        $this->assertSame([0, 1, 1], [(int) $this->row($old)['status'], (int) $this->row($new)['status'], (int) $this->row($otherSite)['status']]);

        [$code, $out] = (new Reap())->run(['newer-than' => 'not a time at all']);
        $this->assertSame(2, $code);
        $this->assertStringContainsString('--newer-than', $out);
        [$code] = (new Reap())->run(['idsite' => ['x']]);
        $this->assertSame(2, $code);
    }
}
