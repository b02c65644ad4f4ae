<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PHPUnit\Framework\TestCase;

/**
 * The operator's view in a real browser: the real Matomo 5.2 (../shared/matomo), the plugin
 * activated, served by `php -S` with the extension, a super user logging in through Matomo's
 * login form in a headless Chromium (Selenium, tests/support/browser.py), then the plugin's
 * page and Matomo's System Check, checked for what a person sees there:
 * - this host with a live archiver (fresh heartbeat) holding two invalidations, judged alive;
 * - a killed archiver's invalidation judged dead (`kill -9` of a registered claimer);
 * - a host that stopped heartbeating ten minutes ago, its invalidation dead, the host stale;
 * - what `archiveclaim:reap` released, and why;
 * - the queue by site;
 * - the System Check's entries: extension ok, index ok, dead holders and stale host warned.
 *
 * Screenshots of both pages are kept in tests/php/artifacts/OperatorPageTest/ (printed at the
 * end). Without Chromium, chromium-driver or python3-selenium the test says skipped.
 */
final class OperatorPageTest extends TestCase
{
    private const INI = ['heartbeat_interval' => 1, 'lease' => 3, 'auto_reap' => 0];
    private const BROWSER_PACKAGES = ['/usr/bin/chromium' => 'chromium', '/usr/bin/chromedriver' => 'chromium-driver'];
    private const LOGIN = 'admin';
    private const PASSWORD = 'e2e-Admin-pass1!';
    private const GONE_HOST = 'archiver-gone';

    private static ?RealMatomo $matomo = null;
    private static string $skip = '';
    /** @var list<resource> processes to end at the end */
    private static array $children = [];

    public static function artifacts(): string
    {
        return __DIR__ . '/artifacts/OperatorPageTest';
    }

    public static function setUpBeforeClass(): void
    {
        if (RealMatomo::sharedDir() === null) {
            self::$skip = 'no real Matomo: ' . dirname(__DIR__, 3) . '/shared/matomo is not beside the repository';
            return;
        }
        $missing = [];
        foreach (self::BROWSER_PACKAGES as $file => $package) {
            if (!is_file($file)) {
                $missing[] = $package;
            }
        }
        [$code] = RealMatomo::run(['/usr/bin/python3', '-c', 'import selenium'], ['PATH' => getenv('PATH')]);
        if ($code !== 0) {
            $missing[] = 'python3-selenium';
        }
        if ($missing) {
            self::$skip = 'no headless browser: install ' . implode(' ', $missing) . ' (scripts/test does as root)';
            return;
        }
        if (!is_dir(self::artifacts())) {
            mkdir(self::artifacts(), 0777, true);
        }
        @unlink(self::artifacts() . '/heartbeat-threads.log');
        self::$matomo = RealMatomo::install(['SITES' => 3, 'SKIP_VISITS' => 1, 'START' => '2024-01-01'],
            self::INI + ['log' => self::artifacts() . '/heartbeat-threads.log']);
        self::$matomo->copyPlugin();
        [$code, $out] = self::$matomo->console(['plugin:activate', 'ArchiveClaim']);
        if ($code !== 0) {
            throw new \RuntimeException("plugin:activate failed:\n$out");
        }
    }

    public static function tearDownAfterClass(): void
    {
        foreach (self::$children as $child) {
            proc_terminate($child, 9);
            proc_close($child);
        }
        self::$children = [];
        self::$matomo?->remove();
        self::$matomo = null;
        if (self::$skip === '' && is_dir(self::artifacts())) {
            fwrite(STDERR, "\nOperatorPageTest: screenshots and the heartbeat threads' log in " . self::artifacts() . "\n");
        }
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

    /**
     * A registered archiver in a child PHP (the extension as php.ini gives it): claims $ids and
     * waits with its heartbeat running. Returns its pid.
     */
    private function archiver(array $ids): int
    {
        $code = '$db = json_decode($argv[1], true); Matomo\ArchiveClaim\configure($db); $me = Matomo\ArchiveClaim\register_process();'
            . ' $won = array_values(array_filter(json_decode($argv[2]), fn ($id) => Matomo\ArchiveClaim\claim_invalidation($id)));'
            . ' echo json_encode(["pid" => $me["pid"], "won" => $won]), "\n"; fgets(STDIN);';
        $proc = proc_open([PHP_BINARY, '-r', $code, json_encode(self::m()->database()), json_encode($ids)],
            [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['file', '/dev/null', 'a']], $pipes, null, self::m()->env(true));
        self::$children[] = $proc;
        $ready = json_decode((string) fgets($pipes[1]), true);
        $this->assertSame($ids, $ready['won'] ?? null, 'the archiver claimed its invalidations');
        return $ready['pid'];
    }

    public function testAPersonSeesTheFleetAndItsTroublesInMatomo(): void
    {
        $m = self::m();
        [$liveA, $liveB] = [$m->queueRow(['idsite' => 1, 'date1' => '2024-01-01', 'date2' => '2024-01-01']),
            $m->queueRow(['idsite' => 1, 'date1' => '2024-01-01', 'date2' => '2024-01-31', 'period' => 3])];
        $killed = $m->queueRow(['idsite' => 2, 'date1' => '2024-01-02', 'date2' => '2024-01-02']);
        $goneHeld = $m->queueRow(['idsite' => 3, 'date1' => '2024-01-03', 'date2' => '2024-01-03']);
        $goneReleased = $m->queueRow(['idsite' => 2, 'date1' => '2024-01-04', 'date2' => '2024-01-04']);
        $m->queueRow(['idsite' => 3, 'date1' => '2024-01-05', 'date2' => '2024-01-05']);

        $live = $this->archiver([$liveA, $liveB]);
        $dead = $this->archiver([$killed]);
        posix_kill($dead, SIGKILL);
        for ($i = 0; $i < 50 && file_exists("/proc/$dead/status") && !str_contains((string) @file_get_contents("/proc/$dead/status"), 'State:	Z'); $i++) {
            usleep(20000);
        }

        // A host that stopped heartbeating ten minutes ago, while it held two invalidations.
        $m->pdo()->exec("INSERT INTO matomo_archive_claim_process (host, pid, boot_id, pid_namespace, start_ticks, started_at,
            time_zone, works_for, reaps, registered_at, heartbeat_at, beats, reap_runs, released, errors, last_error)
            VALUES ('" . self::GONE_HOST . "', 4242, 'another-boot', 4026531836, 1000, UNIX_TIMESTAMP() - 7200, @@session.time_zone, NULL, 1,
            UNIX_TIMESTAMP() - 3600, UNIX_TIMESTAMP() - 600, 2990, 2990, 0, 1, 'Lost connection to MySQL server during query')");
        $m->claimAs($goneHeld, self::GONE_HOST, '4242', 'NOW() - INTERVAL 15 MINUTE');
        $m->claimAs($goneReleased, self::GONE_HOST, '4242', 'NOW() - INTERVAL 15 MINUTE');
        // The operator released site 2's share: it shows as released, with its reason. A one-off
        // command has watched no heartbeat, so it proves no silence: the operator declares the
        // host dead (the fleet's heartbeat threads would release it after watching a lease).
        [$code, $out] = $m->console(['archiveclaim:reap', '--idsite=2', '--processing-host=' . self::GONE_HOST, '--force']);
        $this->assertSame(0, $code, $out);
        $this->assertSame(0, (int) $m->pdo()->query("SELECT status FROM matomo_archive_invalidations WHERE idinvalidation = $goneReleased")->fetchColumn(), $out);

        [$url, $stop] = $m->serve(true, self::artifacts() . '/php-server.log');
        try {
            $pages = $this->browse($url, [
                ['name' => 'fleet', 'url' => 'index.php?module=ArchiveClaim&action=index&idSite=1&period=day&date=yesterday',
                    'wait_for' => '.archiveclaim-page', 'collect' => [
                        'extension' => '.archiveclaim-extension', 'hosts' => '.archiveclaim-host', 'processes' => '.archiveclaim-process',
                        'rows' => '.archiveclaim-row', 'recent' => '.archiveclaim-recent tbody tr', 'queue' => '.archiveclaim-queue tbody tr',
                        'menu' => '#secondNavBar a']],
                ['name' => 'system-check', 'url' => 'index.php?module=Installation&action=systemCheckPage&idSite=1&period=day&date=yesterday',
                    'wait_for' => '#systemCheckOptional tr', 'collect' => ['checks' => '#systemCheckOptional tr']],
            ]);
        } finally {
            $stop();
        }

        $fleet = $pages['fleet']['collect'];
        $this->assertSame('ok', $fleet['extension'][0]['state'], $fleet['extension'][0]['text']);
        $this->assertContains('Archiving fleet', array_column($fleet['menu'], 'text'), 'Administration → System lists the page');

        $hosts = array_column($fleet['hosts'], 'text', 'host');
        $this->assertEqualsCanonicalizing([gethostname(), self::GONE_HOST], array_keys($hosts), 'both hosts are shown');
        $this->assertStringContainsString('Heartbeats stale', $hosts[self::GONE_HOST]);
        $this->assertStringNotContainsString('Heartbeats stale', $hosts[gethostname()]);
        $this->assertStringContainsString('In progress: 3 (2 alive, 1 dead, 0 unknown)', $hosts[gethostname()]);
        $this->assertStringContainsString('Lost connection to MySQL server during query', $hosts[self::GONE_HOST], 'its thread\'s last error');

        $processes = array_column($fleet['processes'], null, 'pid');
        $this->assertSame('1', $processes[(string) $live]['fresh'] ?? null, 'the live archiver heartbeats');
        $this->assertStringContainsString('2 invalidation(s)', $processes[(string) $live]['text']);
        $this->assertSame('0', $processes['4242']['fresh']);

        $verdicts = array_column($fleet['rows'], 'verdict', 'idinvalidation');
        // The silent host's row: its heartbeat reads ten minutes old, but the web server's PHP has
        // watched nothing, and no database clock proves a death: unknown until a watcher decides.
        $this->assertSame(['alive', 'alive', 'dead', 'unknown'], [$verdicts[(string) $liveA] ?? null, $verdicts[(string) $liveB] ?? null,
            $verdicts[(string) $killed] ?? null, $verdicts[(string) $goneHeld] ?? null], json_encode($fleet['rows']));
        $rows = array_column($fleet['rows'], 'text', 'idinvalidation');
        $this->assertStringContainsString('pid_gone', $rows[(string) $killed], 'the killed archiver\'s row says why');
        $this->assertArrayNotHasKey((string) $goneReleased, $rows, 'released rows are no longer in progress');

        $recent = array_column($fleet['recent'], 'text', 'idinvalidation');
        $this->assertArrayHasKey((string) $goneReleased, $recent, 'the release is listed');
        $this->assertStringContainsString(self::GONE_HOST . ' pid 4242', $recent[(string) $goneReleased]);
        $this->assertStringContainsString('re-queued', $recent[(string) $goneReleased]);
        $this->assertStringContainsString('archiveclaim:reap pid', $recent[(string) $goneReleased]);

        $queue = array_column($fleet['queue'], 'text', 'idsite');
        $this->assertSame([1, 2, 3], array_keys($queue));
        $this->assertSame('2 1 1', $queue[2], 'site 2: the released one queued, the killed archiver\'s in progress');
        $this->assertStringContainsString('archiveclaim:reap --processing-host=HOST --force', $pages['fleet']['text'], 'the page names the commands');

        $checks = [];
        $labels = ['Archive claims: matomo_archive_claim extension', 'Archive claims: index on status',
            'Archive claims: invalidations held by dead processes', "Archive claims: archiving hosts' heartbeats",
            'Archive claims: clock offset to the database', "Archive claims: Matomo's archive Model"];
        foreach ($pages['system-check']['collect']['checks'] as $row) {
            foreach ($labels as $label) {
                if (str_starts_with($row['text'], $label)) {
                    $checks[$label] = [$row['icons'][0] ?? '', $row['text']];
                }
            }
        }
        $this->assertSame('icon-ok', $checks['Archive claims: matomo_archive_claim extension'][0] ?? null, json_encode($checks));
        $this->assertSame('icon-ok', $checks['Archive claims: index on status'][0] ?? null);
        $this->assertSame('icon-warning', $checks['Archive claims: invalidations held by dead processes'][0] ?? null);
        $this->assertStringContainsString('1 invalidation(s) are held by dead processes', $checks['Archive claims: invalidations held by dead processes'][1]);
        $this->assertStringContainsString('./console archiveclaim:reap', $checks['Archive claims: invalidations held by dead processes'][1]);
        $this->assertSame('icon-warning', $checks["Archive claims: archiving hosts' heartbeats"][0] ?? null);
        $this->assertStringContainsString('No fresh heartbeat from ' . self::GONE_HOST, $checks["Archive claims: archiving hosts' heartbeats"][1]);
        $this->assertSame('icon-ok', $checks['Archive claims: clock offset to the database'][0] ?? null);
        $this->assertSame('icon-ok', $checks["Archive claims: Matomo's archive Model"][0] ?? null, 'Matomo 5.2\'s Model is the one the plugin was written for');

        foreach (['fleet', 'system-check'] as $page) {
            $this->assertFileExists($pages[$page]['screenshot']);
        }
    }

    /**
     * An archiver that works and leaves: claims $ids, completes the first $complete of them,
     * gives the rest back, unregisters (its heartbeat thread writes its last minute of load)
     * and exits. Returns what it did.
     */
    private function worker(array $ids, int $complete): array
    {
        $code = '$db = json_decode($argv[1], true); Matomo\ArchiveClaim\configure($db); Matomo\ArchiveClaim\register_process();'
            . ' $ids = json_decode($argv[2]); $won = array_values(array_filter($ids, fn ($id) => Matomo\ArchiveClaim\claim_invalidation($id)));'
            . ' $done = Matomo\ArchiveClaim\complete_invalidations(array_slice($won, 0, (int) $argv[3]));'
            . ' $back = Matomo\ArchiveClaim\release_invalidations(array_slice($won, (int) $argv[3]));'
            . ' Matomo\ArchiveClaim\unregister_process(); echo json_encode(["won" => count($won), "done" => $done, "back" => $back]);';
        [$code, $out] = self::m()->php(['-r', $code, json_encode(self::m()->database()), json_encode($ids), (string) $complete]);
        $this->assertSame(0, $code, $out);
        return json_decode($out, true);
    }

    /** Per host, what the load table holds for the last 24 hours (what the share table sums). */
    private function loadInDatabase(): array
    {
        $sums = [];
        foreach (self::m()->pdo()->query('SELECT host, SUM(claimed) c, SUM(finished) f, SUM(released) r FROM matomo_archive_claim_load
            WHERE minute >= UNIX_TIMESTAMP() - 86400 - 60 GROUP BY host')->fetchAll(\PDO::FETCH_ASSOC) as $r) {
            $sums[$r['host']] = [(int) $r['c'], (int) $r['f'], (int) $r['r']];
        }
        return $sums;
    }

    /** Matomo's HTTP API, as a monitoring system calls it. */
    private function api(string $url, string $method, array $params, ?string $token): string
    {
        $query = http_build_query(['module' => 'API', 'method' => $method] + $params + ($token === null ? [] : ['token_auth' => $token]));
        $context = stream_context_create(['http' => ['ignore_errors' => true, 'timeout' => 60]]);
        return (string) file_get_contents($url . 'index.php?' . $query, false, $context);
    }

    /** A user with view access to site 1 only, and an API token of theirs. */
    private function viewUser(): array
    {
        $script = self::m()->root . '/e2e-view-user.php';
        file_put_contents($script, '<?php
define("PIWIK_DOCUMENT_ROOT", __DIR__); define("PIWIK_INCLUDE_PATH", __DIR__); define("PIWIK_USER_PATH", __DIR__);
define("PIWIK_ENABLE_DISPATCH", false); define("PIWIK_ENABLE_ERROR_HANDLER", false); define("PIWIK_ENABLE_SESSION_START", false);
require __DIR__ . "/core/bootstrap.php";
$env = new \Piwik\Application\Environment("cli"); $env->init();
\Piwik\Plugin\Manager::getInstance()->loadActivatedPlugins();
\Piwik\Access::doAsSuperUser(function () {
    $users = new \Piwik\Plugins\UsersManager\Model();
    if (!$users->getUser("viewer")) {
        \Piwik\Plugins\UsersManager\API::getInstance()->addUser("viewer", "e2e-Viewer-pass1!", "viewer@example.invalid");
        $users->addUserAccess("viewer", "view", [1]);
    }
    $token = $users->generateRandomTokenAuth();
    $users->addTokenAuth("viewer", $token, "e2e", \Piwik\Date::now()->getDatetime());
    echo $token;
});');
        [$code, $out] = self::m()->php([$script]);
        $this->assertSame(0, $code, $out);
        return ['viewer', 'e2e-Viewer-pass1!', trim(substr($out, -32))];
    }

    /**
     * The page is live: it changes without a reload when an archiver starts and when one is
     * killed; its load chart has points for the hosts that worked and its share table matches
     * the database; a claim held far longer than its kind's history is marked long-running
     * (page, console, System Check); the API answers what the page shows, in every format, to a
     * super user only.
     */
    public function testThePageIsLiveShowsLoadAndLongRunningAndTheApiAgrees(): void
    {
        $m = self::m();
        $host = gethostname();
        // History: days of site 1 usually take about 2 s; the threshold is the default (3 x that, and 300 s).
        $insert = $m->pdo()->prepare('INSERT INTO matomo_archive_claim_duration (idsite, period, finished_at, seconds, host) VALUES (1, 1, UNIX_TIMESTAMP() - ?, ?, ?)');
        foreach (range(1, 10) as $i) {
            $insert->execute([600 + $i * 60, 1.5 + $i / 20, $host]);
        }
        // Another server's work an hour ago (its own heartbeat thread wrote these rows).
        $m->pdo()->exec("INSERT INTO matomo_archive_claim_load (minute, host, claimed, finished, released, in_progress, processes)
            VALUES (UNIX_TIMESTAMP() DIV 60 * 60 - 3600, 'archiver-b', 7, 6, 1, 3, 2), (UNIX_TIMESTAMP() DIV 60 * 60 - 3540, 'archiver-b', 4, 4, 0, 2, 1)");
        // This host: a run that claimed 5, finished 3 and gave 2 back.
        $work = [];
        foreach (range(11, 15) as $day) {
            $work[] = $m->queueRow(['idsite' => 2, 'date1' => "2024-01-$day", 'date2' => "2024-01-$day"]);
        }
        $this->assertSame(['won' => 5, 'done' => 3, 'back' => 2], $this->worker($work, 3));
        $starting = $m->queueRow(['idsite' => 3, 'date1' => '2024-01-16', 'date2' => '2024-01-16']);
        $killed = $m->queueRow(['idsite' => 3, 'date1' => '2024-01-17', 'date2' => '2024-01-17']);
        $long = $m->queueRow(['idsite' => 1, 'date1' => '2024-01-18', 'date2' => '2024-01-18']);

        [$url, $stop] = $m->serve(true, self::artifacts() . '/php-server-live.log');
        $spec = self::artifacts() . '/browser-live-spec.json';
        file_put_contents($spec, json_encode(['base' => $url, 'login' => self::LOGIN, 'password' => self::PASSWORD,
            'out' => self::artifacts(), 'interactive' => true]));
        $browser = proc_open(['/usr/bin/python3', __DIR__ . '/../support/browser.py', $spec], [0 => ['pipe', 'r'], 1 => ['pipe', 'w'],
            2 => ['file', self::artifacts() . '/browser-live.log', 'w']], $pipes, null, ['PATH' => getenv('PATH'), 'HOME' => sys_get_temp_dir()]);
        $ask = function (array $command) use ($pipes): array {
            fwrite($pipes[0], json_encode($command) . "\n");
            $answer = json_decode((string) fgets($pipes[1]), true);
            $this->assertIsArray($answer, 'the browser answered ' . json_encode($command) . ' (see browser-live.log)');
            return $answer;
        };
        try {
            $this->assertSame(['ready' => true], json_decode((string) fgets($pipes[1]), true), 'the browser logged in');
            $ask(['op' => 'open', 'url' => 'index.php?module=ArchiveClaim&action=index&idSite=1&period=day&date=yesterday', 'wait_for' => '#archiveclaim-live']);

            // An archiver starts: its process and claim appear without a reload.
            $started = $this->archiver([$starting]);
            $seen = $ask(['op' => 'wait', 'css' => ".archiveclaim-process[data-pid=\"$started\"]",
                'collect' => ['rows' => '.archiveclaim-row']]);
            $this->assertTrue($seen['marked'], 'the page was not reloaded');
            $this->assertGreaterThan(0, $seen['refreshes'], 'the page refreshed itself');
            $this->assertSame('alive', array_column($seen['collect']['rows'], 'verdict', 'idinvalidation')[(string) $starting] ?? null);
            $this->assertMatchesRegularExpression('/updated \d+ s ago/', $seen['text']);

            // One is killed: its claim turns dead without a reload.
            $victim = $this->archiver([$killed]);
            $ask(['op' => 'wait', 'css' => ".archiveclaim-row[data-idinvalidation=\"$killed\"][data-verdict=\"alive\"]"]);
            posix_kill($victim, SIGKILL);
            $seen = $ask(['op' => 'wait', 'css' => ".archiveclaim-row[data-idinvalidation=\"$killed\"][data-verdict=\"dead\"]"]);
            $this->assertTrue($seen['marked'], 'the page was not reloaded');

            // A claim held far longer than days of site 1 take: marked long-running.
            $this->archiver([$long]);
            $m->pdo()->exec("UPDATE matomo_archive_invalidations SET ts_started = NOW() - INTERVAL 10 MINUTE WHERE idinvalidation = $long");
            $before = $this->loadInDatabase();
            $seen = $ask(['op' => 'wait', 'css' => ".archiveclaim-row[data-idinvalidation=\"$long\"][data-long-running=\"1\"]",
                'screenshot' => 'fleet-live', 'collect' => ['rows' => '.archiveclaim-row', 'shares' => '.archiveclaim-share',
                    'points' => 'circle.archiveclaim-point', 'charts' => 'svg.archiveclaim-chart']]);
            $after = $this->loadInDatabase();
            $this->assertTrue($seen['marked'], 'the page was not reloaded');
        } finally {
            fwrite($pipes[0], json_encode(['op' => 'quit']) . "\n");
            fclose($pipes[0]);
            proc_close($browser);
        }

        try {
            $rows = array_column($seen['collect']['rows'], null, 'idinvalidation');
            $this->assertSame('1', $rows[(string) $long]['long-running']);
            $this->assertStringContainsString('long-running', $rows[(string) $long]['text']);
            $this->assertStringContainsString('p95 of this site and period', $rows[(string) $long]['text']);
            $this->assertSame('0', $rows[(string) $starting]['long-running'], 'a fresh claim is not long-running');

            // The chart: points for both hosts that worked, in each of the four charts.
            $this->assertCount(4, $seen['collect']['charts']);
            $pointHosts = array_unique(array_column($seen['collect']['points'], 'host'));
            $this->assertContains($host, $pointHosts, 'this host worked');
            $this->assertContains('archiver-b', $pointHosts, 'archiver-b worked an hour ago');
            // The share table: what the database holds (counters only grow, so between the reads before and after).
            $shares = array_column($seen['collect']['shares'], null, 'host');
            $this->assertSame(['11', '10', '1'], [$shares['archiver-b']['claimed'] ?? null, $shares['archiver-b']['finished'] ?? null,
                $shares['archiver-b']['released'] ?? null], json_encode($shares));
            $finishedAll = array_sum(array_map('intval', array_column($shares, 'finished')));
            $this->assertEquals(round(100 * 10 / $finishedAll, 1), (float) $shares['archiver-b']['share-finished'], 'its share of the finished work');
            foreach ([0 => 'claimed', 1 => 'finished', 2 => 'released'] as $i => $k) {
                $this->assertGreaterThanOrEqual($before[$host][$i], (int) $shares[$host][$k], "$k: " . json_encode([$before, $after, $shares]));
                $this->assertLessThanOrEqual($after[$host][$i], (int) $shares[$host][$k], "$k: " . json_encode([$before, $after, $shares]));
            }
            $this->assertGreaterThanOrEqual(5, (int) $shares[$host]['claimed']);

            // The API, as a monitoring system reads it, with the super user's token.
            $token = trim(file_get_contents($m->root . '/tmp/e2e-token'));
            $fleet = json_decode($this->api($url, 'ArchiveClaim.getFleet', ['format' => 'json'], $token), true);
            $this->assertIsArray($fleet);
            $api = array_column(array_filter($fleet, fn ($r) => $r['kind'] === 'claim'), null, 'idinvalidation');
            foreach ([$starting, $killed, $long] as $id) {
                $this->assertSame($rows[(string) $id]['verdict'], $api[$id]['verdict'] ?? null, "getFleet agrees with the page on #$id");
                $this->assertSame((int) $rows[(string) $id]['long-running'], $api[$id]['long_running'] ?? null, "getFleet agrees on #$id");
            }
            $this->assertSame($host, $api[$long]['host']);
            $apiShares = array_column(json_decode($this->api($url, 'ArchiveClaim.getHostLoad', ['format' => 'json', 'shares' => 1], $token), true), null, 'host');
            $this->assertSame([11, 10, 1], [$apiShares['archiver-b']['claimed'], $apiShares['archiver-b']['finished'],
                $apiShares['archiver-b']['released']]);
            $this->assertEquals((float) $shares['archiver-b']['share-finished'], (float) $apiShares['archiver-b']['share_finished'], 'getHostLoad agrees with the page');
            $points = json_decode($this->api($url, 'ArchiveClaim.getHostLoad', ['format' => 'json', 'window' => '7d', 'host' => 'archiver-b'], $token), true);
            $this->assertSame(11, array_sum(array_column($points, 'claimed')), json_encode($points));
            $releases = json_decode($this->api($url, 'ArchiveClaim.getReleases', ['format' => 'json'], $token), true);
            $this->assertIsArray($releases);
            foreach ($releases as $r) {
                $this->assertArrayHasKey('reason', $r); // what the page's "Released recently" lists (the first test's reap, when it ran)
            }
            foreach (['xml' => '<host>archiver-b</host>', 'csv' => 'archiver-b', 'tsv' => 'archiver-b', 'html' => 'archiver-b'] as $format => $needle) {
                $raw = $this->api($url, 'ArchiveClaim.getHostLoad', ['format' => $format, 'shares' => 1], $token);
                // Matomo writes CSV and TSV as UTF-16LE with a byte order mark (for Excel).
                $text = str_starts_with($raw, "\xff\xfe") ? mb_convert_encoding(substr($raw, 2), 'UTF-8', 'UTF-16LE') : $raw;
                $this->assertStringContainsString($needle, $text, $format);
            }

            // Nobody else: a user with view access, and no token at all.
            [$viewer, $viewerPassword, $viewerToken] = $this->viewUser();
            foreach (['getFleet', 'getHostLoad', 'getReleases'] as $method) {
                foreach (['view access' => $viewerToken, 'no token' => null] as $who => $t) {
                    $answer = $this->api($url, "ArchiveClaim.$method", ['format' => 'json'], $t);
                    $this->assertStringContainsString('"result":"error"', $answer, "$method, $who");
                    $this->assertStringNotContainsString('archiver-b', $answer, "$method, $who");
                }
            }
            $spec = self::artifacts() . '/browser-viewer-spec.json';
            file_put_contents($spec, json_encode(['base' => $url, 'login' => $viewer, 'password' => $viewerPassword, 'out' => self::artifacts(),
                'pages' => [['name' => 'fleet-as-viewer', 'url' => 'index.php?module=ArchiveClaim&action=index&idSite=1&period=day&date=yesterday',
                    'wait_for' => 'body', 'collect' => ['page' => '.archiveclaim-page', 'menu' => '#secondNavBar a']],
                    ['name' => 'fleet-live-as-viewer', 'url' => 'index.php?module=ArchiveClaim&action=live', 'wait_for' => 'body',
                        'collect' => ['live' => '.archiveclaim-live-content']]]]));
            [$code, $out] = RealMatomo::run(['/usr/bin/python3', __DIR__ . '/../support/browser.py', $spec], ['PATH' => getenv('PATH'), 'HOME' => sys_get_temp_dir()]);
            $this->assertSame(0, $code, $out);
            $viewed = json_decode(substr($out, (int) strrpos($out, "\n{")), true) ?? json_decode($out, true);
            $this->assertSame([], $viewed['pages']['fleet-as-viewer']['collect']['page'], 'no page for a viewer');
            $this->assertNotContains('Archiving fleet', array_column($viewed['pages']['fleet-as-viewer']['collect']['menu'], 'text'));
            $this->assertSame([], $viewed['pages']['fleet-live-as-viewer']['collect']['live'], 'no live part for a viewer');
        } finally {
            $stop();
        }

        // The console and the System Check say the same.
        [$code, $out] = $m->console(['archiveclaim:status', '--long-running']);
        $this->assertStringContainsString("#$long", $out);
        $this->assertStringContainsString('LONG-RUNNING', $out);
        foreach (preg_grep('/^\s+#\d+/', explode("\n", $out)) as $line) {
            $this->assertStringContainsString('LONG-RUNNING', $line, 'only long-running rows');
        }
        [$code, $out] = $m->console(['diagnostics:run']);
        $this->assertMatchesRegularExpression('/long-running archives.*\\d+ invalidation\(s\) have run more than 3 x/s', $out);
    }

    /**
     * Logs in as the super user and opens the pages in a headless Chromium.
     *
     * @return array<string, array{title: string, text: string, screenshot: string, collect: array}>
     */
    private function browse(string $url, array $pages): array
    {
        $spec = self::artifacts() . '/browser-spec.json';
        file_put_contents($spec, json_encode(['base' => $url, 'login' => self::LOGIN, 'password' => self::PASSWORD,
            'out' => self::artifacts(), 'pages' => $pages]));
        [$code, $out] = RealMatomo::run(['/usr/bin/python3', __DIR__ . '/../support/browser.py', $spec],
            ['PATH' => getenv('PATH'), 'HOME' => sys_get_temp_dir()]);
        $json = json_decode(substr($out, (int) strrpos($out, "\n{")), true) ?? json_decode($out, true);
        $this->assertSame(0, $code, "the browser failed:\n$out");
        $this->assertIsArray($json, $out);
        return $json['pages'];
    }
}
