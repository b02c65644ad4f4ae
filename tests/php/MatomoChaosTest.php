<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PHPUnit\Framework\TestCase;

/**
 * Chaos in a real Matomo 5.2 fleet, judged by its reports.
 *
 * A real Matomo (../shared/matomo) with a few sites in different time zones and weeks of visits
 * tracked through its real tracker, every report invalidated. Three archiving servers (own host
 * name and pid namespace each, as SimulatedServer makes them) loop `core:archive` on the shared
 * queue, like cron; the plugin is active and the extension comes from an ini file (as php.ini
 * would load it, so the climulti:request children Matomo spawns have it too). Meanwhile: kill -9
 * of random core:archive parents and climulti:request children, one server losing power for good
 * (its namespace's init killed), one database restart. Then the survivors finish.
 *
 * Judged by: the queue drained; no (site, period, date) archived by two live children at once
 * (the children's command lines, sampled from /proc all along) and no archive claimed twice at
 * once (the table, sampled); every day, week and month report (VisitsSummary.get nb_visits and
 * nb_actions through Matomo's API, browser archiving off, so only what core:archive wrote) equal
 * to the numbers taken straight from the visit log (log_visit and log_link_visit_action, per site
 * and day in the site's time zone). The time from the last fault to the queue drained (the last
 * report is written before its invalidation is deleted) is printed, not asserted.
 *
 * The same run (same seed: same faults at the same times) on stock Matomo (plugin deactivated, no
 * extension) follows and prints what it leaves behind, side by side; nothing is asserted on it.
 *
 * Short by default (scripts/test); MATOMO_ARCHIVE_CLAIM_MATOMO_CHAOS_SECONDS=S (scripts/chaos
 * --matomo --long S) makes the fault window S seconds, with more sites and days and a database
 * restart every 60 s. MATOMO_ARCHIVE_CLAIM_CHAOS_SEED=N replays a run's random choices.
 */
final class MatomoChaosTest extends TestCase
{
    private const START = '2024-01-01';
    private const ZONES = [1 => 'UTC', 2 => 'Asia/Tokyo', 3 => 'Europe/Berlin', 4 => 'Australia/Sydney', 5 => 'Asia/Kolkata'];
    private const SERVERS = ['matomo-chaos-1', 'matomo-chaos-2', 'matomo-chaos-3'];

    private static ?RealMatomo $matomo = null;
    private static string $skip = '';
    private static bool $long = false;
    private static int $faultSeconds = 24;
    private static int $sites = 3;
    private static int $days = 14;
    /** @var array<string, array<string, mixed>> the two runs' outcomes, printed side by side */
    private static array $runs = [];

    public static function setUpBeforeClass(): void
    {
        if (RealMatomo::sharedDir() === null) {
            self::$skip = 'no real Matomo: ' . dirname(__DIR__, 3) . '/shared/matomo is not beside the repository';
            return;
        }
        if (!SimulatedServer::canIsolate()) {
            self::$skip = 'needs root and unshare --uts --pid --fork --mount-proc for servers with their own host name and pids';
            return;
        }
        $seconds = (int) (getenv('MATOMO_ARCHIVE_CLAIM_MATOMO_CHAOS_SECONDS') ?: 0);
        if ($seconds > 0) {
            self::$long = true;
            self::$faultSeconds = $seconds;
            self::$sites = 5;
            self::$days = max(28, min(120, intdiv($seconds, 3)));
        }
        $t = microtime(true);
        self::$matomo = RealMatomo::install(['SITES' => self::$sites, 'DAYS' => self::$days, 'VISITS_PER_DAY' => 4, 'START' => self::START],
            ['heartbeat_interval' => 1, 'lease' => 3, 'auto_reap' => 1]);
        $m = self::$matomo;
        $m->copyPlugin();
        // Browser archiving off: what the API answers is only what core:archive wrote.
        $m->setConfig('General', 'enable_browser_archiving_triggering', '0');
        $m->setConfig('General', 'browser_archiving_disabled_enforce', '1');
        foreach (self::ZONES as $idSite => $zone) {
            $m->pdo()->prepare('UPDATE matomo_site SET timezone = ? WHERE idsite = ?')->execute([$zone, $idSite]);
        }
        [$code, $out] = $m->console(['core:clear-caches']);
        if ($code !== 0) {
            throw new \RuntimeException("core:clear-caches: $out");
        }
        fwrite(STDERR, sprintf("\nMatomoChaosTest: Matomo installed with %d sites x %d days of visits in %.1f s\n", self::$sites, self::$days, microtime(true) - $t));
    }

    public static function tearDownAfterClass(): void
    {
        if (self::$runs) {
            self::printSideBySide();
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

    public function testAFleetWithThePluginSurvivesChaosWithEveryReportRight(): void
    {
        // The judge first: with no archive at all, every report with visits must come out missing.
        self::$matomo->resetArchives();
        [$wrong, $checked, $missing] = $this->compareReports();
        $this->assertGreaterThan(self::$sites * self::$days, $missing, 'the comparison sees missing reports');
        $this->assertCount($missing, $wrong, 'and each is a difference');
        $r = $this->chaos(true);
        self::$runs['with the plugin and the extension'] = $r;
        $this->assertGreaterThan(0, $r['faults']['core:archive parents killed'], 'chaos killed archiving runs');
        $this->assertSame(1, $r['faults']['servers powered off'], 'one server lost power');
        if (getenv('MATOMO_ARCHIVE_CLAIM_TEST_DB_RESTART')) {
            $this->assertGreaterThan(0, $r['faults']['database restarts'], 'the database restarted');
        }
        $this->assertSame([], $r['double archiving'], 'no (site, period, date) archived by two live children at once');
        $this->assertSame([], $r['double claims'], 'no archive claimed twice at once');
        $this->assertSame(0, $r['left in progress'] + $r['left queued'], 'the queue drained (within the run): ' . json_encode($r['leftover']));
        $this->assertSame([], $r['wrong reports'], 'every day, week and month report equals the visit log');
        $this->assertGreaterThan(0, $r['reports checked']);
    }

    /** @depends testAFleetWithThePluginSurvivesChaosWithEveryReportRight */
    public function testTheSameRunOnStockMatomoForComparison(): void
    {
        // Printed beside the run above by tearDownAfterClass; nothing to assert: this is what
        // Matomo alone leaves behind (rows in progress until archive_failure_recovery_timeout).
        self::$runs['stock Matomo (plugin deactivated, no extension)'] = $r = $this->chaos(false);
        $this->assertGreaterThan(0, $r['reports checked']);
    }

    /**
     * One chaos run; returns what happened and what it left behind.
     *
     * @return array<string, mixed>
     */
    private function chaos(bool $withPlugin): array
    {
        $m = self::$matomo;
        $pdo = $m->pdo();
        self::$matomo->resetArchives();
        [$code, $out] = $m->console(['plugin:' . ($withPlugin ? 'activate' : 'deactivate'), 'ArchiveClaim'], $withPlugin);
        $this->assertSame(0, $code, $out);
        $end = date('Y-m-d', strtotime(self::START . ' +' . self::$days . ' days')); // the last day of visits + 1 (time zones east of UTC)
        [$code, $out] = $m->console(['core:invalidate-report-data', '--dates=' . self::START . ",$end", '--sites=all'], $withPlugin);
        $this->assertSame(0, $code, $out);
        $queued = $this->invalidationCount('1');
        $this->assertGreaterThan(self::$days, $queued);

        $seed = (int) (getenv('MATOMO_ARCHIVE_CLAIM_CHAOS_SEED') ?: random_int(1, 1 << 30));
        mt_srand($seed);
        $dir = sys_get_temp_dir() . '/matomo-chaos.' . getmypid() . '.' . ($withPlugin ? 'plugin' : 'stock');
        @mkdir($dir, 0777, true);
        $stop = "$dir/stop";
        @unlink($stop);
        $servers = [];
        foreach (self::SERVERS as $name) {
            $servers[$name] = $this->startServer($name, $dir, $stop, $withPlugin);
        }
        $restart = getenv('MATOMO_ARCHIVE_CLAIM_TEST_DB_RESTART') ?: null;
        $faults = ['core:archive parents killed' => 0, 'climulti:request children killed' => 0, 'servers powered off' => 0, 'database restarts' => 0];
        $doubleArchiving = $doubleClaims = [];
        $t0 = microtime(true);
        $powerOffAt = self::$faultSeconds * 0.3;
        $restartEvery = self::$long ? 60.0 : self::$faultSeconds * 0.55;
        $nextRestart = $restartEvery;
        $nextKill = 2.0;
        $lastFault = $t0;
        $lastSample = 0.0;
        $drainedAt = null;
        $lostServer = null;
        $maxAfterFaults = self::$long ? 600 : 240; // "within the run": a bound, not a measurement
        $timeline = [];
        $settledState = null;
        $settledSince = microtime(true);
        try {
            while (true) {
                $now = microtime(true) - $t0;
                $children = $this->children($m->root);
                $this->checkDoubleArchiving($children, $doubleArchiving, $now);
                if ($now - $lastSample > 0.25) {
                    $lastSample = $now;
                    $this->checkDoubleClaims($doubleClaims, $now);
                }
                $inFaultWindow = $now < self::$faultSeconds;
                if ($inFaultWindow && $lostServer === null && $now >= $powerOffAt) {
                    // One server loses power for good: its namespace's init (and every process in it) dies at once.
                    $lostServer = self::SERVERS[mt_rand(0, count(self::SERVERS) - 1)];
                    posix_kill($servers[$lostServer]['pid'], SIGKILL);
                    $faults['servers powered off']++;
                    $lastFault = microtime(true);
                    $timeline[] = sprintf('%5.1f s  %s powered off', $now, $lostServer);
                }
                if ($inFaultWindow && $restart && $now >= $nextRestart) {
                    exec(escapeshellarg($restart) . ' 2>&1', $o, $rc);
                    $this->assertSame(0, $rc, 'restarting the database: ' . implode("\n", $o));
                    $faults['database restarts']++;
                    $lastFault = microtime(true);
                    $timeline[] = sprintf('%5.1f s  database restarted (%.1f s)', $now, microtime(true) - $t0 - $now);
                    $nextRestart += $restartEvery;
                    $this->reconnect();
                }
                if ($inFaultWindow && $now >= $nextKill) {
                    $nextKill = $now + 1.0 + mt_rand(0, 2000) / 1000;
                    $parent = mt_rand(0, 1) === 0;
                    $pool = array_filter($children, fn ($c) => $c['kind'] === ($parent ? 'core:archive' : 'climulti:request'));
                    if ($pool) {
                        $keys = array_keys($pool);
                        $pid = $keys[mt_rand(0, count($keys) - 1)];
                        posix_kill($pid, SIGKILL);
                        $faults[$parent ? 'core:archive parents killed' : 'climulti:request children killed']++;
                        $lastFault = microtime(true);
                        $timeline[] = sprintf('%5.1f s  kill -9 %s pid %d%s', $now, $pool[$pid]['kind'], $pid, $parent ? '' : ' (' . $pool[$pid]['archive'] . ')');
                    }
                }
                if (!$inFaultWindow) {
                    $left = $this->leftover();
                    if ($withPlugin && $left['queued'] + $left['in progress'] === 0) {
                        $drainedAt = microtime(true);
                        break;
                    }
                    if (!$withPlugin) {
                        // Stock: rows a killed run left in progress wait for
                        // archive_failure_recovery_timeout (a day), and the weeks and months
                        // around them wait with them, so the queue never drains. The survivors are
                        // done when no child archives and nothing changed for 10 s.
                        $state = [$left['queued'], $left['in progress'], (bool) array_filter($children, fn ($c) => $c['kind'] === 'climulti:request')];
                        if ($state !== $settledState || $state[2]) {
                            $settledState = $state;
                            $settledSince = microtime(true);
                        } elseif (microtime(true) - $settledSince > 10) {
                            break;
                        }
                    }
                    if (microtime(true) - $lastFault > $maxAfterFaults) {
                        break;
                    }
                }
                usleep(50000);
            }
        } finally {
            touch($stop);
            $this->stopServers($servers);
        }
        $left = $this->leftover();
        [$wrong, $checked, $missing] = $this->compareReports();
        $result = [
            'seed' => $seed,
            'queued at start' => $queued,
            'faults' => $faults,
            'timeline' => $timeline,
            'last fault to queue drained' => $drainedAt !== null && $withPlugin ? sprintf('%.1f s', $drainedAt - $lastFault) : 'not drained',
            'run' => sprintf('%.1f s', microtime(true) - $t0),
            'double archiving' => $doubleArchiving,
            'double claims' => $doubleClaims,
            'left in progress' => $left['in progress'],
            'left queued' => $left['queued'],
            'leftover' => $left['rows'],
            'reports checked' => $checked,
            'reports missing' => $missing,
            'wrong reports' => $wrong,
            'core:archive runs' => $this->runsStarted($dir),
        ];
        exec('rm -rf ' . escapeshellarg($dir));
        return $result;
    }

    /** A server: its own host name and pid namespace, looping core:archive as cron would. */
    private function startServer(string $name, string $dir, string $stop, bool $withExtension): array
    {
        $m = self::$matomo;
        $console = implode(' ', array_map('escapeshellarg', $m->consoleCommand(['core:archive', '--url=http://localhost/'])));
        $log = escapeshellarg("$dir/$name.log");
        // The namespace's init is this shell (pid 1 there): it reaps the detached children that
        // runs leave behind, and its death (power loss) kills every process of the server.
        // With the extension, the server also runs the long-lived watcher the README asks for
        // (`archive-claim watch`): between two short core:archive runs nobody else watches,
        // and only a watch proves another server silent.
        $watch = $withExtension
            ? implode(' ', array_map('escapeshellarg', [PHP_BINARY, __DIR__ . '/../../php/bin/archive-claim',
                '--config=' . $m->root . '/config/config.ini.php', 'watch'])) . " >> $log 2>&1 & "
            : '';
        $loop = 'hostname "$0" && ' . $watch . 'while [ ! -e ' . escapeshellarg($stop) . ' ]; do echo "RUN $(date +%s.%N)" >> ' . $log
            . "; $console >> $log 2>&1; echo \"EXIT \$?\" >> $log; sleep 0.3; done";
        $proc = proc_open(['unshare', '--uts', '--pid', '--fork', '--mount-proc', '--kill-child', 'sh', '-c', $loop, $name],
            [0 => ['file', '/dev/null', 'r'], 1 => ['file', '/dev/null', 'a'], 2 => ['file', "$dir/$name.err", 'a']], $pipes, null, $m->env($withExtension));
        return ['proc' => $proc, 'pid' => proc_get_status($proc)['pid']];
    }

    private function stopServers(array $servers): void
    {
        $deadline = microtime(true) + 120;
        foreach ($servers as $s) {
            while (proc_get_status($s['proc'])['running'] && microtime(true) < $deadline) {
                usleep(100000);
            }
            if (proc_get_status($s['proc'])['running']) {
                posix_kill($s['pid'], SIGKILL); // unshare --kill-child takes the namespace with it
            }
            proc_close($s['proc']);
        }
        // Detached children outlive nothing: each namespace died with its init.
    }

    private function runsStarted(string $dir): int
    {
        $n = 0;
        foreach (self::SERVERS as $name) {
            $n += substr_count((string) @file_get_contents("$dir/$name.log"), "\nRUN ") + (str_starts_with((string) @file_get_contents("$dir/$name.log"), 'RUN ') ? 1 : 0);
        }
        return $n;
    }

    /**
     * This Matomo's archiving processes, from /proc (every namespace is visible from here):
     * core:archive parents and climulti:request children (PHP itself, not the shell that
     * started it), zombies left out (a zombie archives nothing).
     *
     * @return array<int, array{kind: string, archive: string}>
     */
    private function children(string $root): array
    {
        $found = [];
        foreach (glob('/proc/[0-9]*', GLOB_NOSORT) as $d) {
            $cmd = @file_get_contents("$d/cmdline");
            if ($cmd === false || $cmd === '' || !str_contains($cmd, "$root/console")) {
                continue;
            }
            $argv = explode("\0", rtrim($cmd, "\0"));
            if (!str_starts_with(basename($argv[0]), 'php')) {
                continue;
            }
            $stat = (string) @file_get_contents("$d/stat");
            $state = substr($stat, strrpos($stat, ')') + 2, 1);
            if ($state === 'Z' || $state === 'X' || $state === '') {
                continue;
            }
            $pid = (int) basename($d);
            if (in_array('core:archive', $argv, true)) {
                $found[$pid] = ['kind' => 'core:archive', 'archive' => ''];
            } elseif (in_array('climulti:request', $argv, true)) {
                $query = (string) end($argv);
                parse_str($query, $q);
                $found[$pid] = ['kind' => 'climulti:request', 'archive' => sprintf('site %s, %s %s%s',
                    $q['idSite'] ?? '?', $q['period'] ?? '?', $q['date'] ?? '?', empty($q['segment']) ? '' : ', segment ' . $q['segment'])];
            }
        }
        return $found;
    }

    private function checkDoubleArchiving(array $children, array &$violations, float $now): void
    {
        $by = [];
        foreach ($children as $pid => $c) {
            if ($c['kind'] === 'climulti:request') {
                $by[$c['archive']][] = $pid;
            }
        }
        foreach ($by as $archive => $pids) {
            if (count($pids) > 1) {
                $violations[] = sprintf('%.1f s: %s by pids %s', $now, $archive, implode(', ', $pids));
            }
        }
    }

    private function checkDoubleClaims(array &$violations, float $now): void
    {
        try {
            $rows = self::$matomo->pdo()->query('SELECT idsite, period, date1, date2, name, report, processing_host, process_id
                FROM matomo_archive_invalidations WHERE status = 1')->fetchAll(\PDO::FETCH_ASSOC);
        } catch (\PDOException $e) {
            $this->reconnect(); // the database is restarting
            return;
        }
        $by = [];
        foreach ($rows as $r) {
            $by["site {$r['idsite']}, period {$r['period']}, {$r['date1']},{$r['date2']}, {$r['name']}{$r['report']}"][] = "{$r['processing_host']}:{$r['process_id']}";
        }
        foreach ($by as $key => $owners) {
            if (count($owners) > 1) {
                $violations[] = sprintf('%.1f s: %s claimed by %s', $now, $key, implode(', ', $owners));
            }
        }
    }

    /** @return array{queued: int, 'in progress': int, rows: list<string>} */
    private function leftover(): array
    {
        for ($i = 0; ; $i++) {
            try {
                $rows = self::$matomo->pdo()->query("SELECT idinvalidation, idsite, period, date1, status, processing_host, process_id
                    FROM matomo_archive_invalidations WHERE date1 < '2025-01-01' ORDER BY idinvalidation")->fetchAll(\PDO::FETCH_ASSOC);
                break;
            } catch (\PDOException $e) {
                if ($i > 100) {
                    throw $e;
                }
                usleep(200000);
                $this->reconnect();
            }
        }
        $queued = count(array_filter($rows, fn ($r) => (int) $r['status'] === 0));
        return ['queued' => $queued, 'in progress' => count($rows) - $queued, 'rows' => array_map(fn ($r) => sprintf('#%d site %d period %d %s status %d %s:%s',
            $r['idinvalidation'], $r['idsite'], $r['period'], $r['date1'], $r['status'], $r['processing_host'] ?? '-', $r['process_id'] ?? '-'), array_slice($rows, 0, 20))];
    }

    private function invalidationCount(string $where): int
    {
        return (int) self::$matomo->pdo()->query("SELECT COUNT(*) FROM matomo_archive_invalidations WHERE $where")->fetchColumn();
    }

    private function reconnect(): void
    {
        self::$matomo->reconnect();
    }

    /**
     * Every day, week and month report of every site against the visit log.
     *
     * @return array{0: list<string>, 1: int, 2: int} what differs, how many reports were compared, how many were missing
     */
    private function compareReports(): array
    {
        $m = self::$matomo;
        $pdo = $m->pdo();
        $zones = $pdo->query('SELECT idsite, timezone FROM matomo_site')->fetchAll(\PDO::FETCH_KEY_PAIR);
        // Per site and local day: visits (by the visit's last action, as Matomo assigns them) and their actions.
        $truth = [];
        $rows = $pdo->query('SELECT v.idsite, v.visit_last_action_time, COUNT(a.idlink_va) AS actions
            FROM matomo_log_visit v LEFT JOIN matomo_log_link_visit_action a ON a.idvisit = v.idvisit GROUP BY v.idvisit');
        foreach ($rows as $r) {
            $day = (new \DateTime($r['visit_last_action_time'], new \DateTimeZone('UTC')))->setTimezone(new \DateTimeZone($zones[$r['idsite']]))->format('Y-m-d');
            $truth[(int) $r['idsite']][$day]['nb_visits'] = ($truth[(int) $r['idsite']][$day]['nb_visits'] ?? 0) + 1;
            $truth[(int) $r['idsite']][$day]['nb_actions'] = ($truth[(int) $r['idsite']][$day]['nb_actions'] ?? 0) + (int) $r['actions'];
        }
        $end = date('Y-m-d', strtotime(self::START . ' +' . self::$days . ' days'));
        [$url, $stop] = $m->serve(false);
        $wrong = [];
        $checked = $missing = 0;
        try {
            $token = trim((string) file_get_contents("$m->root/tmp/e2e-token"));
            foreach (array_keys($zones) as $idSite) {
                foreach (['day', 'week', 'month'] as $period) {
                    $answer = $this->api($url, $token, ['method' => 'VisitsSummary.get', 'idSite' => $idSite, 'period' => $period, 'date' => self::START . ",$end"]);
                    foreach ($answer as $key => $row) {
                        [$from, $to] = self::bounds($period, (string) $key);
                        $expected = ['nb_visits' => 0, 'nb_actions' => 0];
                        foreach ($truth[(int) $idSite] ?? [] as $day => $n) {
                            if ($day >= $from && $day <= $to) {
                                $expected['nb_visits'] += $n['nb_visits'];
                                $expected['nb_actions'] += $n['nb_actions'];
                            }
                        }
                        $got = ['nb_visits' => (int) ($row['nb_visits'] ?? 0), 'nb_actions' => (int) ($row['nb_actions'] ?? 0)];
                        $checked++;
                        if ($row === [] && $expected['nb_visits'] > 0) {
                            $missing++;
                        }
                        if ($got !== $expected) {
                            $wrong[] = sprintf('site %d %s %s: report %s, visit log %s', $idSite, $period, $key,
                                $row === [] ? 'missing' : "{$got['nb_visits']} visits / {$got['nb_actions']} actions",
                                "{$expected['nb_visits']} visits / {$expected['nb_actions']} actions");
                        }
                    }
                }
            }
        } finally {
            $stop();
        }
        return [$wrong, $checked, $missing];
    }

    /** @return array{0: string, 1: string} first and last day of a period key of Matomo's multi-period answer */
    private static function bounds(string $period, string $key): array
    {
        return match ($period) {
            'day' => [$key, $key],
            'week' => str_contains($key, ',') ? explode(',', $key) : [$key, date('Y-m-d', (int) strtotime("$key +6 days"))],
            'month' => ["$key-01", date('Y-m-t', strtotime("$key-01"))],
        };
    }

    private function api(string $url, string $token, array $params): array
    {
        $body = http_build_query($params + ['module' => 'API', 'format' => 'json', 'token_auth' => $token]);
        $context = stream_context_create(['http' => ['method' => 'POST', 'header' => 'Content-Type: application/x-www-form-urlencoded',
            'content' => $body, 'timeout' => 120, 'ignore_errors' => true]]);
        $out = (string) file_get_contents("{$url}index.php", false, $context);
        $data = json_decode($out, true);
        if (!is_array($data) || isset($data['result']) && $data['result'] === 'error') {
            throw new \RuntimeException('API ' . json_encode($params) . ": $out");
        }
        return $data;
    }

    private static function printSideBySide(): void
    {
        $names = array_keys(self::$runs);
        $rows = [
            'seed' => fn ($r) => (string) $r['seed'],
            'invalidations queued at start' => fn ($r) => (string) $r['queued at start'],
            'core:archive runs started' => fn ($r) => (string) $r['core:archive runs'],
            'core:archive parents killed (-9)' => fn ($r) => (string) $r['faults']['core:archive parents killed'],
            'climulti:request children killed (-9)' => fn ($r) => (string) $r['faults']['climulti:request children killed'],
            'servers powered off for good' => fn ($r) => (string) $r['faults']['servers powered off'],
            'database restarts' => fn ($r) => (string) $r['faults']['database restarts'],
            'archived by two live children at once' => fn ($r) => (string) count($r['double archiving']),
            'claimed twice at once' => fn ($r) => (string) count($r['double claims']),
            'left in progress at the end' => fn ($r) => (string) $r['left in progress'],
            'left queued at the end' => fn ($r) => (string) $r['left queued'],
            'reports compared (day, week, month)' => fn ($r) => (string) $r['reports checked'],
            'reports missing' => fn ($r) => (string) $r['reports missing'],
            'reports not equal to the visit log' => fn ($r) => (string) count($r['wrong reports']),
            'last fault to queue drained' => fn ($r) => $r['last fault to queue drained'],
            'whole run' => fn ($r) => $r['run'],
        ];
        $w = max(array_map('strlen', array_keys($rows))) + 2;
        $out = "\nMatomo chaos run (" . (self::$long ? 'long: ' : 'short: ') . self::$sites . ' sites x ' . self::$days . ' days, 3 servers, faults for '
            . self::$faultSeconds . " s):\n" . str_pad('', $w);
        foreach ($names as $n) {
            $out .= str_pad($n, 50);
        }
        $out .= "\n";
        foreach ($rows as $label => $f) {
            $out .= str_pad($label, $w);
            foreach ($names as $n) {
                $out .= str_pad($f(self::$runs[$n]), 50);
            }
            $out .= "\n";
        }
        foreach (self::$runs as $n => $r) {
            $out .= "\n$n: faults\n  " . implode("\n  ", $r['timeline']) . "\n";
            if ($r['leftover']) {
                $out .= "  left behind (first 20): " . implode('; ', $r['leftover']) . "\n";
            }
            if ($r['wrong reports']) {
                $out .= '  reports not equal to the visit log (first 10): ' . implode('; ', array_slice($r['wrong reports'], 0, 10)) . "\n";
            }
            foreach (['double archiving', 'double claims'] as $k) {
                if ($r[$k]) {
                    $out .= "  $k: " . implode('; ', array_slice($r[$k], 0, 10)) . "\n";
                }
            }
        }
        fwrite(STDERR, $out);
    }
}
