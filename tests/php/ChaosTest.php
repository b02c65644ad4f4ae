<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use function Matomo\ArchiveClaim\reap_orphans;

/**
 * Chaos: simulated servers (own host and pid namespaces as root) with several archivers each
 * drain a queue while archivers are killed with SIGKILL, whole servers lose power and are
 * replaced, the database restarts, its time zone changes under running sessions, and reapers
 * run concurrently (every server's heartbeat threads, plus this process). One archiver per
 * server works as Matomo's do, in climulti:request children that outlive a killed parent. The
 * first server's archivers connect as a user at its connection limit: their heartbeats cannot
 * connect, so they claim unregistered, and only their own host may release what they leave. Invariants, checked at the end from the archivers' log and the
 * table: every invalidation was completed, no row was lost or invented, none was worked on by
 * two live processes at once, no live claim was taken away, and nothing is left in progress.
 *
 * Short by default (CI); MATOMO_ARCHIVE_CLAIM_CHAOS_SECONDS=300 (scripts/chaos --long) runs
 * longer with a bigger queue. On a violation (or with MATOMO_ARCHIVE_CLAIM_CHAOS_KEEP_LOG=1) the
 * archivers' log is kept and its path printed: every start and end, every release with whose
 * row, by which process and why, and when each process or server was killed.
 */
final class ChaosTest extends ExtensionTestCase
{
    /** @var array<string, SimulatedServer> */
    private array $servers = [];
    private int $serverCount = 0;
    /** The server whose archivers are at their user's connection limit (never powered off). */
    private ?string $limited = null;
    private ?string $limitedUser = null;

    protected function tearDown(): void
    {
        foreach ($this->servers as $s) {
            $s->killWhole();
        }
        $this->setGlobalTimeZone('SYSTEM');
        if ($this->limitedUser !== null) {
            TestDatabase::admin()->exec("DROP USER '{$this->limitedUser}'@'%'");
        }
        parent::tearDown();
    }

    private function startServer(string $log, int $archivers, bool $atConnectionLimit = false): void
    {
        $name = 's' . (++$this->serverCount);
        $server = SimulatedServer::start($name, $this->config, ['heartbeat_interval' => 1, 'lease' => 5, 'auto_reap' => 1]);
        $this->servers[$name] = $server;
        $config = $this->config;
        if ($atConnectionLimit) {
            // Two connections per archiver (its PDO and the extension's): none left for a
            // heartbeat. Their claims are unregistered; this server's agent, registered as
            // another user, is the host's reaper that can see their pids.
            $this->limitedUser = 'mac_chaos_' . bin2hex(random_bytes(3));
            $admin = TestDatabase::admin();
            $admin->exec("CREATE USER '{$this->limitedUser}'@'%' IDENTIFIED BY 'pw' WITH MAX_USER_CONNECTIONS " . (2 * $archivers));
            $admin->exec("GRANT ALL ON `{$this->config['dbname']}`.* TO '{$this->limitedUser}'@'%'");
            $config = ['username' => $this->limitedUser, 'password' => 'pw'] + $this->config;
            $server->send(['cmd' => 'register']);
            $this->limited = $name;
        }
        for ($i = 0; $i < $archivers; $i++) {
            $server->send(['cmd' => 'run', 'script' => __DIR__ . '/../support/archiver.php',
                // The child-mode archiver works for longer than a heartbeat interval, so a
                // reaper sees its children outlive a killed parent.
                'args' => $i === 0 && !$atConnectionLimit
                    ? [json_encode($config), $log, '1500', 'ext', '0', '3000', 'child']
                    : [json_encode($config), $log, '40', 'ext', '11', '120']]);
        }
    }

    private function remaining(): int
    {
        return (int) $this->pdo->query("SELECT COUNT(*) FROM {$this->table()}")->fetchColumn();
    }

    public function testNothingIsLostOrDoneTwiceThroughKillsPowerLossesAndADatabaseRestart(): void
    {
        $seconds = (int) (getenv('MATOMO_ARCHIVE_CLAIM_CHAOS_SECONDS') ?: 0);
        $long = $seconds > 0;
        $rows = $long ? $seconds * 40 : 1200;
        $restart = getenv('MATOMO_ARCHIVE_CLAIM_TEST_DB_RESTART') ?: null;
        $ids = TestDatabase::queueMany($this->pdo, self::PREFIX, $rows);
        $log = tempnam(sys_get_temp_dir(), 'chaos');
        $reapLog = new WorkLog($log);
        $rand = new \Random\Randomizer(new \Random\Engine\Mt19937((int) (getenv('MATOMO_ARCHIVE_CLAIM_CHAOS_SEED') ?: random_int(1, PHP_INT_MAX))));

        for ($i = 0; $i < 3; $i++) {
            $this->startServer($log, 3, $i === 0);
        }
        $deaths = [];
        $story = ['archivers killed' => 0, 'servers powered off' => 0, 'database restarts' => 0, 'time zone changes' => 0,
            'released by this reaper' => 0];
        $zones = ['+01:00', '-05:00', '+09:30', '-12:00', '+13:00', 'SYSTEM'];
        $started = microtime(true);
        $deadline = $started + ($long ? $seconds : 90); // chaos stops here; then the queue drains in peace
        $nextRestart = $started + ($long ? 10 : 3);

        while ($this->remainingSafely() > 0 && microtime(true) < $deadline) {
            usleep($rand->getInt(300000, 800000));
            $roll = $rand->getInt(1, 100);
            $names = array_keys($this->servers);
            if ($restart && microtime(true) >= $nextRestart && $story['database restarts'] < ($long ? 1000 : 1)) {
                exec(escapeshellarg($restart) . ' 2>&1', $out, $code);
                $this->assertSame(0, $code, implode("\n", $out));
                $story['database restarts']++;
                $story['last restart at'] = sprintf('%.3f', microtime(true));
                $nextRestart = microtime(true) + 15;
            } elseif ($roll <= 45 && $names) {
                $server = $this->servers[$names[$rand->getInt(0, count($names) - 1)]];
                $victim = $server->randomLiveChild();
                if ($victim !== null) {
                    $killed = $server->send(['cmd' => 'kill', 'pid' => $victim]);
                    WorkLog::died($deaths, $server->host() . " $victim", (float) $killed['at']);
                    $story['archivers killed']++;
                }
            } elseif ($roll <= 52) {
                // Sessions opened from now on read local times in another zone than the
                // archivers' open sessions write them in.
                $this->setGlobalTimeZone($zones[$rand->getInt(0, count($zones) - 1)]);
                $story['time zone changes']++;
            } elseif ($roll <= 70 && count($names) > 1) {
                // Not the connection-limited server: its unregistered claims would wait for
                // the recovery timeout, as a stock Matomo server's do.
                $candidates = array_values(array_diff($names, [$this->limited]));
                $name = $candidates[$rand->getInt(0, count($candidates) - 1)];
                $host = $this->servers[$name]->host();
                $this->servers[$name]->killWhole();
                // killWhole() returns once every process of the server is gone.
                WorkLog::died($deaths, $host, microtime(true));
                unset($this->servers[$name]);
                $story['servers powered off']++;
                $this->startServer($log, 3); // a replacement comes up
            }
            try {
                $report = reap_orphans();
                $story['released by this reaper'] += $report['released'];
                $reapLog->reaped($report['rows'], 'test');
            } catch (\Matomo\ArchiveClaim\ConnectionException) {
                // the database is restarting
            }
        }
        // Calm: no more chaos; reap until nothing is left (the last orphans wait for their lease).
        while ($this->remainingSafely() > 0 && microtime(true) < $deadline + ($long ? 600 : 60)) {
            try {
                $report = reap_orphans();
                $story['released by this reaper'] += $report['released'];
                $reapLog->reaped($report['rows'], 'test');
            } catch (\Matomo\ArchiveClaim\ConnectionException) {
            }
            usleep(200000);
        }
        $elapsed = microtime(true) - $started;
        foreach ($this->servers as $server) {
            // What the agents' own heartbeat threads released (the connection-limited server's
            // agent reaps for its host).
            $reapLog->reaped($server->send(['cmd' => 'background_releases'])['rows'], "agent-of-{$server->host()}");
        }

        $work = WorkLog::analyse($log, $deaths);
        $story['done at the connection limit'] = count(preg_grep("/ done \\d+ {$this->limited} /", file($log) ?: []));
        $violations = array_merge($work['lost'], $work['overlaps'], $work['unfinished']);
        if ($violations || getenv('MATOMO_ARCHIVE_CLAIM_CHAOS_KEEP_LOG')) {
            // Keep the evidence: every start and end, every release with whose row, by whom
            // and why, and when each process or server was killed.
            $kept = sys_get_temp_dir() . '/chaos-' . ($violations ? 'failed-' : '') . date('Ymd-His') . '-' . getmypid() . '.log';
            copy($log, $kept);
            file_put_contents($kept, sprintf("# deaths (killed at): %s\n", json_encode($deaths)), FILE_APPEND);
            fwrite(STDERR, "\nchaos: the archivers' log is kept in $kept\n");
        }
        unlink($log);
        fwrite(STDERR, sprintf("\nchaos (%s, %s): %d invalidations in %.1f s; %s\n",
            $long ? 'long' : 'short', SimulatedServer::canIsolate() ? 'servers in namespaces' : 'servers as process groups on one host',
            $rows, $elapsed, implode(', ', array_map(fn ($k, $v) => "$k: $v", array_keys($story), $story))));

        // Safety first: these must hold however far the run got.
        $this->assertSame([], $work['lost'], 'no live claim was taken away');
        $this->assertSame([], $work['overlaps'], 'no invalidation was worked on by two live processes at once');
        $this->assertSame([], $work['unfinished'], 'only killed processes left work unfinished');
        $this->assertSame([], array_diff($work['seen'], $ids), 'no invalidation was invented');
        // Then liveness: everything got done.
        $this->assertSame(0, $this->remaining(), 'nothing left queued or in progress');
        $this->assertSame($ids, $work['done'], 'every invalidation was completed');
        $this->assertGreaterThan(0, $story['archivers killed'] + $story['servers powered off'], 'chaos happened');
        $this->assertGreaterThan(0, $story['done at the connection limit'], 'the archivers without a heartbeat worked too');
        if ($restart) {
            $this->assertSame(true, $story['database restarts'] > 0, 'the database restarted during the run');
        }
    }

    private function setGlobalTimeZone(string $zone): void
    {
        try {
            TestDatabase::admin()->exec("SET GLOBAL time_zone = '$zone'");
        } catch (\PDOException) {
            // the database is restarting: the zone stays
        }
    }

    private function remainingSafely(): int
    {
        try {
            return $this->remaining();
        } catch (\PDOException) {
            $this->pdo = TestDatabase::matomoPdo($this->config);
            return 1;
        }
    }
}
