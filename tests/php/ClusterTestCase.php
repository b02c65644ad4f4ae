<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PDO;
use PHPUnit\Framework\TestCase;

use function Matomo\ArchiveClaim\configure;

/**
 * Tests against a real 3-node MariaDB Galera cluster (tests/support/GaleraCluster.php), one
 * cluster per test class (started in setUpBeforeClass, stopped after the class), a fresh
 * database per test. Archivers and reapers are simulated servers (own host name and pid space)
 * each talking to one node. Skipped, never passed, without root, galera-4 or rsync.
 */
abstract class ClusterTestCase extends TestCase
{
    protected const PREFIX = 'matomo_';

    protected static ?GaleraCluster $cluster = null;
    protected static ?string $unavailable = null;

    protected string $dbname;
    /** @var array<string, SimulatedServer> */
    protected array $servers = [];
    /** @var list<array{0: resource, 1: array}> fresh reaps still running */
    private array $freshReaps = [];
    /** @var array<int, string> what an unfinished fresh reap printed so far */
    private array $freshReapOutput = [];

    /** libfaketime offsets per node the class starts with, e.g. [3 => '+90s']. */
    protected static function clocks(): array
    {
        return [];
    }

    public static function setUpBeforeClass(): void
    {
        self::$unavailable = GaleraCluster::unavailable() ?? (SimulatedServer::canIsolate() ? null
            : 'needs unshare --uts --pid (root) for simulated servers');
        if (self::$unavailable === null) {
            static::$cluster = GaleraCluster::start(3, static::clocks());
        }
    }

    public static function tearDownAfterClass(): void
    {
        static::$cluster?->stop();
        static::$cluster = null;
    }

    protected function setUp(): void
    {
        if (self::$unavailable !== null) {
            $this->markTestSkipped('no Galera cluster: ' . self::$unavailable);
        }
        $this->ensureEveryNodeUp();
        $this->dbname = static::$cluster->createDatabase(self::PREFIX);
        // This process's own reaps (none unless a test asks) go through node 1.
        configure($this->config(1));
    }

    protected function tearDown(): void
    {
        // A test that made this process a watcher: its thread stops with the test's database.
        \Matomo\ArchiveClaim\unregister_process();
        foreach ($this->servers as $s) {
            $s->killWhole();
        }
        $this->servers = [];
        foreach ($this->freshReaps as [$proc, $pipes]) {
            proc_terminate($proc, SIGKILL);
            proc_close($proc);
        }
        $this->freshReaps = [];
        if (static::$cluster !== null) {
            foreach (static::$cluster->nodes() as $n) {
                static::$cluster->releaseApplier($n);
            }
            try {
                static::$cluster->pdo(1)->exec("DROP DATABASE IF EXISTS `{$this->dbname}`");
            } catch (\PDOException) {
                // a test that broke the cluster: the next setUp mends it
            }
        }
    }

    /** A test may leave a node killed or cut off: bring every one back. */
    protected function ensureEveryNodeUp(): void
    {
        $c = static::$cluster;
        foreach ($c->nodes() as $n) {
            $c->releaseApplier($n);
            if (!$c->isRunning($n)) {
                $c->restart($n);
            } elseif ($c->status($n, 'wsrep_cluster_status') !== 'Primary') {
                $c->rejoin($n);
            }
        }
    }

    protected function config(int $node): array
    {
        return static::$cluster->config($node, $this->dbname, self::PREFIX);
    }

    /** Node $n's connection whose reads see every commit made anywhere before them. */
    protected function synced(int $node = 1): PDO
    {
        return static::$cluster->syncedPdo($node, $this->dbname);
    }

    protected function table(): string
    {
        return '`' . self::PREFIX . 'archive_invalidations`';
    }

    /** @return int[] ids of $count queued invalidations (distinct sites and days) */
    protected function queue(int $count): array
    {
        $pdo = static::$cluster->pdo(1, $this->dbname);
        $before = (int) $pdo->query("SELECT COALESCE(MAX(idinvalidation), 0) FROM {$this->table()}")->fetchColumn();
        TestDatabase::queueMany($pdo, self::PREFIX, $count);
        // Not a range: Galera spaces auto-increment values by the cluster size
        // (wsrep_auto_increment_control), so the ids are read back.
        $ids = array_map('intval', $pdo->query("SELECT idinvalidation FROM {$this->table()} WHERE idinvalidation > $before ORDER BY idinvalidation")->fetchAll(\PDO::FETCH_COLUMN));
        // Every node has applied them before anyone claims: a claim on a node that has not yet
        // applied the insert finds no queued row (a lost claim, not what these tests are about).
        foreach (static::$cluster->nodes() as $n) {
            if (static::$cluster->isRunning($n)) {
                $this->synced($n)->query("SELECT COUNT(*) FROM {$this->table()}")->fetchColumn();
            }
        }
        return $ids;
    }

    /** @return array<int, array<string, mixed>> the rows by id, read causally through node $node */
    protected function rows(int $node = 1): array
    {
        return TestDatabase::rows($this->synced($node), self::PREFIX);
    }

    /**
     * A simulated server whose processes talk to node $node.
     *
     * @param array<string, int> $ini matomo_archive_claim.* settings
     */
    protected function server(string $name, int $node, array $ini): SimulatedServer
    {
        return $this->servers[$name] = SimulatedServer::start($name, $this->config($node), $ini);
    }

    protected function powerOff(string $name): void
    {
        $this->servers[$name]->killWhole();
        unset($this->servers[$name]);
    }

    /**
     * Starts reap_orphans() in a new PHP process (no history: it has watched nothing before)
     * through node $node, without waiting: a reap on a held node may block.
     */
    protected function startFreshReap(int $node, array $ini = ['heartbeat_interval' => 1, 'lease' => 4]): int
    {
        $args = ['-d', 'matomo_archive_claim.auto_reap=0'];
        foreach ($ini as $k => $v) {
            $args[] = '-d';
            $args[] = "matomo_archive_claim.$k=$v";
        }
        $args[] = '-r';
        $args[] = 'Matomo\ArchiveClaim\configure(json_decode($argv[1], true));
            try { echo json_encode(Matomo\ArchiveClaim\reap_orphans()); }
            catch (\Throwable $e) { echo json_encode(["error" => get_class($e) . " (" . $e->getCode() . "): " . $e->getMessage()]); }';
        $args[] = json_encode($this->config($node));
        $proc = proc_open(TestDatabase::php($args), [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['file', '/dev/null', 'a']], $pipes);
        $this->freshReaps[] = [$proc, $pipes];
        return array_key_last($this->freshReaps);
    }

    /**
     * The report (or ['error' => ...]) of a fresh reap, waiting up to $seconds; null if it has
     * not finished by then (it is left running and killed at tearDown).
     */
    protected function freshReapResult(int $handle, float $seconds): ?array
    {
        [$proc, $pipes] = $this->freshReaps[$handle];
        stream_set_blocking($pipes[1], false);
        $out = '';
        $deadline = microtime(true) + $seconds;
        // Read as it runs: a big report would fill the pipe and never let the process end.
        while (!feof($pipes[1]) && microtime(true) < $deadline) {
            $out .= (string) stream_get_contents($pipes[1]);
            usleep(20000);
        }
        if (!feof($pipes[1])) {
            $this->freshReapOutput[$handle] = ($this->freshReapOutput[$handle] ?? '') . $out;
            return null;
        }
        $out = ($this->freshReapOutput[$handle] ?? '') . $out . (string) stream_get_contents($pipes[1]);
        unset($this->freshReapOutput[$handle]);
        proc_close($proc);
        unset($this->freshReaps[$handle]);
        return json_decode($out, true) ?? ['error' => "fresh reap printed: $out"];
    }

    /** A fresh reap through node $node, to its end. */
    protected function freshReap(int $node, float $seconds = 30): array
    {
        return $this->freshReapResult($this->startFreshReap($node), $seconds) ?? ['error' => "no answer in $seconds s"];
    }

    /**
     * Rows a reap report released (reset or deleted), by id, as "who: verdict/reason/action".
     *
     * @return array<int, string>
     */
    protected static function released(array $report, string $who): array
    {
        $out = [];
        foreach ($report['rows'] ?? [] as $row) {
            if (in_array($row['action'] ?? '', ['reset', 'deleted_duplicate'], true)) {
                $out[(int) $row['idinvalidation']] = "$who: {$row['verdict']}/{$row['reason']}/{$row['action']}";
            }
        }
        return $out;
    }

    /**
     * Checks that every id in $live is still in progress under $host; returns a description
     * of each that is not (empty if all are held).
     *
     * @param array<int, string> $live id => host that holds it
     * @return list<string>
     */
    protected function lostClaims(array $live, int $node = 1): array
    {
        $rows = $this->rows($node);
        $lost = [];
        foreach ($live as $id => $host) {
            $row = $rows[$id] ?? null;
            if ($row === null || (int) $row['status'] !== 1 || $row['processing_host'] !== $host) {
                $lost[] = "row $id of live $host is now " . json_encode($row === null ? 'gone'
                    : ['status' => $row['status'], 'host' => $row['processing_host'], 'pid' => $row['process_id']]);
            }
        }
        return $lost;
    }
}
