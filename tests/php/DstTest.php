<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

/**
 * A database at time_zone = SYSTEM in Europe/Berlin across the spring-forward hour, on its own
 * throwaway MariaDB whose clock libfaketime starts just before the change. Heartbeats once read
 * as DATETIME jumped an hour stale there and a live archiver's rows were released.
 */
final class DstTest extends \PHPUnit\Framework\TestCase
{
    public function testALiveClaimSurvivesSpringForwardAndADeadOneIsStillReleased(): void
    {
        if (!SimulatedServer::canIsolate()) {
            $this->markTestSkipped('needs root for unshare --uts --pid (separate host names and pid spaces)');
        }
        if (!is_executable('/usr/bin/faketime') || !is_file('/usr/share/zoneinfo/Europe/Berlin')) {
            $this->markTestSkipped('needs faketime and tzdata (apt-get install faketime tzdata)');
        }
        $root = dirname(__DIR__, 2);
        $cmd = 'env -u MATOMO_ARCHIVE_CLAIM_TEST_DSN TZ=Europe/Berlin'
            . " MATOMO_ARCHIVE_CLAIM_TEST_DB_FAKETIME='@2026-03-29 01:59:40'"
            . ' MATOMO_ARCHIVE_CLAIM_EXT=' . escapeshellarg(TestDatabase::extensionPath())
            . ' ' . escapeshellarg("$root/tests/support/with-mariadb.sh")
            . ' ' . escapeshellarg(PHP_BINARY) . ' -d extension=' . escapeshellarg(TestDatabase::extensionPath())
            . ' -d matomo_archive_claim.auto_reap=0 ' . escapeshellarg("$root/tests/support/dst-scenario.php") . ' 2>&1';
        exec($cmd, $out, $code);
        $this->assertSame(0, $code, implode("\n", $out));
        $result = json_decode((string) end($out), true);
        $this->assertIsArray($result, implode("\n", $out));
        $this->assertNotEmpty($result['won'], 'the archiver claimed');
        $this->assertStringStartsWith('2026-03-29 01:59', $result['crossed'][0], 'before the change');
        $this->assertStringStartsWith('2026-03-29 03:00', $result['crossed'][1], 'and after it: local time jumped an hour');
        $this->assertSame(['alive/heartbeat_fresh/kept'], $result['seen'], 'the live claim was kept across the change');
        $this->assertSame(['dead', 'heartbeat_stale', 'reset'], $result['after_death'], 'a real death is still found through the lease');
    }
}
