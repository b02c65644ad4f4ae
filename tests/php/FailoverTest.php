<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PDO;
use PHPUnit\Framework\TestCase;

/**
 * A single database server fails over to a promoted replica, as managed services do (design
 * §9): every connection is dropped, the address answers nothing for a while, then it leads to
 * another server whose Uptime did not restart and whose clock is its own. Archivers (simulated
 * servers, heartbeat 1 s, lease 4 s) reach the database through a TCP forwarder
 * (tests/support/TcpForwarder.php) that plays the address; the outage lasts 2.5 leases. A
 * reaper that reaches the new server directly, before the archivers are back, must not take
 * the claims of archivers that reconnect within a lease; an archiver that died during the
 * outage is still released afterwards. Skipped, never passed, without root.
 */
final class FailoverTest extends TestCase
{
    private const LEASE = 4;
    private const ARCHIVER = ['heartbeat_interval' => 1, 'lease' => self::LEASE, 'auto_reap' => 0];
    private const PREFIX = 'matomo_';

    /** @var array<string, SimulatedServer> */
    private array $servers = [];
    private ?MariaDbServer $primary = null;
    private ?MariaDbServer $replica = null;
    private ?TcpForwarder $forwarder = null;

    protected function setUp(): void
    {
        if (!SimulatedServer::canIsolate()) {
            $this->markTestSkipped('needs root: throwaway servers and unshare --uts --pid for simulated archiving servers');
        }
    }

    protected function tearDown(): void
    {
        foreach ($this->servers as $s) {
            $s->killWhole();
        }
        $this->servers = [];
        $this->forwarder?->stop();
        $this->primary?->stop();
        $this->replica?->stop();
    }

    private function config(int $port, string $dbname, string $password): array
    {
        return ['host' => '127.0.0.1', 'port' => (string) $port, 'username' => 'admin', 'password' => $password,
            'dbname' => $dbname, 'tables_prefix' => self::PREFIX, 'adapter' => 'PDO\\MYSQL', 'charset' => 'utf8mb4'];
    }

    /** A reap_orphans() in a new process (it has watched nothing before) with $config. */
    private function freshReap(array $config): array
    {
        $cmd = TestDatabase::php(['-d', 'matomo_archive_claim.heartbeat_interval=1', '-d', 'matomo_archive_claim.lease=' . self::LEASE,
            '-d', 'matomo_archive_claim.auto_reap=0', '-r',
            'Matomo\ArchiveClaim\configure(json_decode($argv[1], true));
             try { echo json_encode(Matomo\ArchiveClaim\reap_orphans()); }
             catch (\Throwable $e) { echo json_encode(["error" => get_class($e) . ": " . $e->getMessage()]); }',
            json_encode($config)]);
        $out = (string) shell_exec(implode(' ', array_map('escapeshellarg', $cmd)));
        return json_decode($out, true) ?? ['error' => "fresh reap printed: $out"];
    }

    /** @return array<int, string> id => "who: verdict/reason/action" for the rows $report released */
    private static function released(array $report, string $who): array
    {
        $out = [];
        foreach ($report['rows'] ?? [] as $row) {
            if (in_array($row['action'] ?? '', ['reset', 'deleted_duplicate'], true)) {
                $out[(int) $row['idinvalidation']] = "$who: {$row['verdict']}/{$row['reason']}/{$row['action']}";
            }
        }
        return $out;
    }

    public function testAReaperOnThePromotedReplicaKeepsTheClaimsOfArchiversThatReconnectAndReleasesTheDeadOnes(): void
    {
        $password = 'test-' . bin2hex(random_bytes(6));
        $this->primary = MariaDbServer::start(1, $password);
        $this->primary->createUser();
        $this->replica = MariaDbServer::start(2, $password);
        $this->replica->replicate($this->primary);

        $dbname = 'mac_' . bin2hex(random_bytes(6));
        $admin = new PDO("mysql:host=127.0.0.1;port={$this->primary->port()}", 'admin', $password, [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
        $admin->exec("CREATE DATABASE `$dbname`");
        $admin->exec("USE `$dbname`");
        $admin->exec(sprintf(TestDatabase::INVALIDATIONS_DDL, self::PREFIX));
        [$rowA, $rowB, $rowDead, $spare] = TestDatabase::queue($admin, self::PREFIX, array_map(fn ($i) => ['idsite' => $i], [1, 2, 3, 4]));

        $this->forwarder = TcpForwarder::start($this->primary->port());
        $viaAddress = $this->config($this->forwarder->port(), $dbname, $password);
        $direct = $this->config($this->replica->port(), $dbname, $password);
        foreach (['archA' => $rowA, 'archB' => $rowB, 'archDead' => $rowDead] as $name => $id) {
            $this->servers[$name] = SimulatedServer::start($name, $viaAddress, self::ARCHIVER);
            $this->assertSame([$id], $this->servers[$name]->send(['cmd' => 'claim', 'ids' => [$id]])['won']);
        }
        sleep(2); // some heartbeats
        $this->replica->catchUp($this->primary);

        // The outage: the address drops every connection and answers nothing; the primary dies.
        $this->forwarder->down();
        $outage = microtime(true);
        $this->primary->kill();
        usleep(500000);
        $this->servers['archDead']->killWhole(); // an archiver dies while the database is away
        unset($this->servers['archDead']);
        usleep((int) ((2.5 * self::LEASE - (microtime(true) - $outage)) * 1e6));

        // The replica is promoted; a reaper reaches it directly, before anyone else: a fresh
        // reap_orphans() call, and a long-lived reaper (its heartbeat thread reaps too).
        $this->replica->promote();
        $released = self::released($this->freshReap($direct), 'fresh reap, first on the new server');
        $reaper = $this->servers['reaper'] = SimulatedServer::start('reaper', $direct, ['heartbeat_interval' => 1, 'lease' => self::LEASE, 'auto_reap' => 1]);
        $reaper->send(['cmd' => 'register']);
        $released += self::released($reaper->send(['cmd' => 'reap']), 'long-lived reaper, first on the new server');

        // The address leads to the new server; the archivers reconnect (their heartbeat threads
        // retry every second). Watch 3 leases; the dead one must be released within 2 leases
        // and some slack by the long-lived reaper.
        $this->forwarder->up($this->replica->port());
        $back = microtime(true);
        $db = new PDO("mysql:host=127.0.0.1;port={$this->replica->port()};dbname=$dbname", 'admin', $password, [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
        $lost = [];
        $deadReleasedAfter = null;
        while (microtime(true) - $back < 3 * self::LEASE) {
            $released += self::released($this->freshReap($direct), 'fresh reap');
            $released += self::released($reaper->send(['cmd' => 'reap']), 'long-lived reaper');
            $rows = TestDatabase::rows($db, self::PREFIX);
            foreach (['archA' => $rowA, 'archB' => $rowB] as $host => $id) {
                if ((int) $rows[$id]['status'] !== 1 || $rows[$id]['processing_host'] !== $host) {
                    $lost[$id] ??= sprintf('%.1f s after the address came back, row %d of %s (alive, reconnected) is %s', microtime(true) - $back,
                        $id, $host, json_encode(['status' => $rows[$id]['status'], 'host' => $rows[$id]['processing_host']]));
                }
            }
            if ($deadReleasedAfter === null && (int) $rows[$rowDead]['status'] === 0) {
                $deadReleasedAfter = microtime(true) - $back;
            }
            usleep(500000);
        }
        $bound = 2 * self::LEASE + 10;
        while ($deadReleasedAfter === null && microtime(true) - $back < $bound) {
            $reaper->send(['cmd' => 'reap']);
            if ((int) TestDatabase::rows($db, self::PREFIX)[$rowDead]['status'] === 0) {
                $deadReleasedAfter = microtime(true) - $back;
            }
            usleep(300000);
        }
        $stillWorking = [];
        foreach (['archA', 'archB'] as $host) {
            // Reconnected archivers work on: a claim through the address succeeds (or loses the
            // one spare row to the other), and throws nothing.
            $stillWorking[$host] = $this->servers[$host]->send(['cmd' => 'claim_all', 'ids' => [$spare]]);
        }

        fwrite(STDERR, sprintf("\nfailover (lease %d s, outage %.1f s): the dead archiver's claim was back %s after the address came back; %d live claim(s) released\n",
            self::LEASE, $back - $outage, $deadReleasedAfter === null ? 'never' : sprintf('%.1f s', $deadReleasedAfter), count($lost)));
        $this->assertSame([], array_values($lost), 'the claims of archivers that reconnected within a lease were released: '
            . json_encode(array_intersect_key($released, [$rowA => 1, $rowB => 1])));
        $this->assertNotNull($deadReleasedAfter, "the claim of the archiver that died during the outage was not released within $bound s (2 leases + 10 s) after the failover");
        foreach ($stillWorking as $host => $answer) {
            $this->assertSame([], (array) $answer['errors'], "$host claims after the failover");
        }
        $this->assertCount(1, array_merge($stillWorking['archA']['won'], $stillWorking['archB']['won']), 'the spare row went to one of them');
    }
}
