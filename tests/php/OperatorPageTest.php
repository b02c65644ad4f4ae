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
