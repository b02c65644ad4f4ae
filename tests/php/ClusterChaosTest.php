<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use function Matomo\ArchiveClaim\configure;
use function Matomo\ArchiveClaim\reap_orphans;

/**
 * Chaos on a 3-node Galera cluster whose node 3 runs 90 s ahead: simulated servers, each
 * talking to one node, drain a queue with several archivers each (one works as Matomo's do, in
 * climulti:request children), while archivers are killed, whole servers lose power and are
 * replaced on another node, and a node is killed (its servers with it: a server cut off from
 * the database for longer than a lease may by design lose its claims) and comes back. Every
 * server reaps in its heartbeat thread; this process, registered and watching all along as
 * `archive-claim watch` does, reaps through node 1. Invariants, as in
 * ChaosTest, from the archivers' log and the table: every invalidation was completed, none was
 * lost or invented, none was worked on by two live processes at once, no live claim was
 * taken away, nothing is left in progress.
 *
 * Short by default (about two minutes, in CI); MATOMO_ARCHIVE_CLAIM_CHAOS_SECONDS=N
 * (scripts/chaos --cluster N) runs longer with a bigger queue and a node killed every 30 s.
 * MATOMO_ARCHIVE_CLAIM_CHAOS_SEED=N replays a run's random choices.
 */
final class ClusterChaosTest extends ClusterTestCase
{
    private const INI = ['heartbeat_interval' => 1, 'lease' => 5, 'auto_reap' => 1];

    /** @var array<string, int> server name => its node */
    private array $nodeOf = [];
    private int $serverCount = 0;

    protected static function clocks(): array
    {
        return [3 => '+90s'];
    }

    private function startServer(string $log, int $node): void
    {
        $name = 'c' . (++$this->serverCount);
        $server = $this->server($name, $node, self::INI);
        $this->nodeOf[$name] = $node;
        $config = json_encode($this->config($node));
        for ($i = 0; $i < 2; $i++) {
            $server->send(['cmd' => 'run', 'script' => __DIR__ . '/../support/archiver.php',
                'args' => $i === 0
                    ? [$config, $log, '800', 'ext', '0', '1500', 'child']
                    : [$config, $log, '40', 'ext', '11', '200']]);
        }
    }

    private function remaining(): int
    {
        try {
            return (int) $this->synced(1)->query("SELECT COUNT(*) FROM {$this->table()}")->fetchColumn();
        } catch (\PDOException $e) {
            $this->lastReadError = $e->getMessage();
            return 1; // unknown: keep going
        }
    }

    private ?string $lastReadError = null;

    /** What is left, for the failure message: each row with its owner and this reaper's verdict. */
    private function leftOver(): string
    {
        try {
            $rows = $this->synced(1)->query("SELECT idinvalidation, status, processing_host, process_id, ts_started FROM {$this->table()}")
                ->fetchAll(\PDO::FETCH_ASSOC);
            $verdicts = [];
            foreach (reap_orphans(['dry_run' => true])['rows'] as $r) {
                $verdicts[$r['idinvalidation']] = "{$r['verdict']}/{$r['reason']}";
            }
            foreach ($rows as &$row) {
                $row['verdict'] = $verdicts[$row['idinvalidation']] ?? null;
                // What the servers' own reapers (which watch) say of it.
                foreach ($this->servers as $name => $server) {
                    try {
                        $seen = array_column($server->send(['cmd' => 'reap', 'options' => ['dry_run' => true]])['rows'], null, 'idinvalidation')[$row['idinvalidation']] ?? null;
                        $row['seen by ' . $name] = $seen === null ? 'gone' : "{$seen['verdict']}/{$seen['reason']}";
                    } catch (\Throwable $e) {
                        $row['seen by ' . $name] = 'error: ' . $e->getMessage();
                    }
                }
                $row['registrations'] = $this->synced(1)->query("SELECT idprocess, pid, works_for, reaps, heartbeat_version,
                    ROUND(UNIX_TIMESTAMP() - heartbeat_at, 1) AS beat_age FROM " . self::PREFIX . "archive_claim_process
                    WHERE host = " . $this->synced(1)->quote((string) $row['processing_host']))->fetchAll(\PDO::FETCH_ASSOC);
            }
            $threads = $this->synced(1)->query('SELECT host, pid, reaps, beats, reap_runs, released, errors, last_error FROM '
                . self::PREFIX . 'archive_claim_process WHERE errors > 0 OR reaps = 1')->fetchAll(\PDO::FETCH_ASSOC);
            return json_encode(['rows' => $rows, 'live servers' => array_keys($this->servers), 'threads' => $threads,
                'last read error' => $this->lastReadError]);
        } catch (\Throwable $e) {
            return 'cannot read what is left: ' . $e->getMessage() . '; last read error: ' . $this->lastReadError;
        }
    }

    public function testNothingIsLostOrDoneTwiceThroughKillsPowerLossesAndANodeLossWithASkewedClock(): void
    {
        $c = static::$cluster;
        $seconds = (int) (getenv('MATOMO_ARCHIVE_CLAIM_CHAOS_SECONDS') ?: 0);
        $long = $seconds > 0;
        $ids = $this->queue($long ? $seconds * 10 : 300);
        $log = (string) tempnam(sys_get_temp_dir(), 'cluster-chaos');
        $reapLog = new WorkLog($log);
        $seed = (int) (getenv('MATOMO_ARCHIVE_CLAIM_CHAOS_SEED') ?: random_int(1, PHP_INT_MAX));
        $rand = new \Random\Randomizer(new \Random\Engine\Mt19937($seed));

        // This process is the fleet's long-lived watcher (as `archive-claim watch` is in
        // production): once the archivers have drained the queue and ended, only a watch that
        // outlives them can prove the servers that died last silent.
        \Matomo\ArchiveClaim\register_process();
        foreach ([1, 2, 3] as $node) {
            $this->startServer($log, $node);
        }
        $deaths = [];
        $story = ['seed' => $seed, 'archivers killed' => 0, 'servers powered off' => 0, 'nodes killed' => 0, 'released by this reaper' => 0];
        $started = microtime(true);
        $deadline = $started + ($long ? $seconds : 60);
        $nextNodeKill = $started + 8;
        $down = null; // [node, back at]

        while ($this->remaining() > 0 && microtime(true) < $deadline) {
            usleep($rand->getInt(300000, 800000));
            $names = array_keys($this->servers);
            if ($down !== null && microtime(true) >= $down[1]) {
                $c->restart($down[0]);
                $this->startServer($log, $down[0]);
                $down = null;
            } elseif ($down === null && microtime(true) >= $nextNodeKill) {
                // Node 2 or 3 crashes with every server attached to it; replacements come up
                // on the survivors.
                $node = $rand->getInt(2, 3);
                $c->kill($node);
                foreach ($this->nodeOf as $name => $n) {
                    if ($n === $node && isset($this->servers[$name])) {
                        $host = $this->servers[$name]->host();
                        $this->powerOff($name);
                        WorkLog::died($deaths, $host, microtime(true));
                        $this->startServer($log, 5 - $node); // the other of 2 and 3
                    }
                }
                $down = [$node, microtime(true) + 12];
                $story['nodes killed']++;
                $nextNodeKill = $long ? microtime(true) + 30 : PHP_FLOAT_MAX;
            } else {
                $roll = $rand->getInt(1, 100);
                if ($roll <= 50 && $names) {
                    $server = $this->servers[$names[$rand->getInt(0, count($names) - 1)]];
                    $victim = $server->randomLiveChild();
                    if ($victim !== null) {
                        $killed = $server->send(['cmd' => 'kill', 'pid' => $victim]);
                        WorkLog::died($deaths, $server->host() . " $victim", (float) $killed['at']);
                        $story['archivers killed']++;
                    }
                } elseif ($roll <= 65 && count($names) > 1) {
                    $name = $names[$rand->getInt(0, count($names) - 1)];
                    $host = $this->servers[$name]->host();
                    $this->powerOff($name);
                    WorkLog::died($deaths, $host, microtime(true));
                    $story['servers powered off']++;
                    $live = array_values(array_filter([1, 2, 3], fn ($n) => $down === null || $n !== $down[0]));
                    $this->startServer($log, $live[$rand->getInt(0, count($live) - 1)]);
                }
            }
            $this->reapHere($story, $reapLog);
        }
        if ($down !== null) {
            $c->restart($down[0]);
        }
        // Calm: reap until nothing is left (the last orphans wait for their lease).
        while ($this->remaining() > 0 && microtime(true) < $deadline + 60) {
            $this->reapHere($story, $reapLog);
            usleep(300000);
        }
        $elapsed = microtime(true) - $started;
        foreach ($this->servers as $server) {
            $reapLog->reaped($server->send(['cmd' => 'background_releases'])['rows'], "agent-of-{$server->host()}");
        }

        $work = WorkLog::analyse($log, $deaths);
        $violations = array_merge($work['lost'], $work['overlaps'], $work['unfinished']);
        if ($violations || getenv('MATOMO_ARCHIVE_CLAIM_CHAOS_KEEP_LOG')) {
            $kept = sys_get_temp_dir() . '/cluster-chaos-' . ($violations ? 'failed-' : '') . date('Ymd-His') . '-' . getmypid() . '.log';
            copy($log, $kept);
            file_put_contents($kept, sprintf("# deaths (killed at): %s\n", json_encode($deaths)), FILE_APPEND);
            fwrite(STDERR, "\ncluster chaos: the archivers' log is kept in $kept\n");
        }
        unlink($log);
        fwrite(STDERR, sprintf("\ncluster chaos (%s): %d invalidations in %.1f s; %s\n", $long ? 'long' : 'short', count($ids), $elapsed,
            implode(', ', array_map(fn ($k, $v) => "$k: $v", array_keys($story), $story))));

        $this->assertSame([], $work['lost'], 'no live claim was taken away');
        $this->assertSame([], $work['overlaps'], 'no invalidation was worked on by two live processes at once');
        $this->assertSame([], $work['unfinished'], 'only killed processes left work unfinished');
        $this->assertSame([], array_diff($work['seen'], $ids), 'no invalidation was invented');
        $this->assertSame(0, $this->remaining(), 'nothing left queued or in progress: ' . $this->leftOver());
        $this->assertSame($ids, $work['done'], 'every invalidation was completed');
        $this->assertGreaterThan(0, $story['nodes killed'], 'a node was killed');
    }

    /** One reap by this process through node 1 (a long-lived reaper: it keeps its history). */
    private function reapHere(array &$story, WorkLog $reapLog): void
    {
        try {
            $report = reap_orphans();
            $story['released by this reaper'] += $report['released'];
            $reapLog->reaped($report['rows'], 'test');
        } catch (\Matomo\ArchiveClaim\Exception $e) {
            // A reap that lost to another node, or node 1 busy with a joiner: the next one goes on.
            $story['reap errors'] = ($story['reap errors'] ?? 0) + 1;
            $story['last reap error'] = $e->getMessage();
        }
    }
}
