<?php
/**
 * The benchmarks: every figure next to what a Matomo operator has today, on this machine, in
 * this run. Prints medians and ratios; never fails on time. Run through scripts/bench
 * (--quick for a smaller, faster pass).
 */

declare(strict_types=1);

namespace Matomo\ArchiveClaim\Bench;

use Matomo\ArchiveClaim as Claim;
use Matomo\ArchiveClaim\Tests\SimulatedServer;
use Matomo\ArchiveClaim\Tests\TestDatabase;
use PDO;
use Matomo\ArchiveClaim\Tests\StockMatomo;

require __DIR__ . '/../../tests/support/TestDatabase.php';
require __DIR__ . '/../../tests/support/SimulatedServer.php';
require __DIR__ . '/../../php/ArchiveClaim/Lib/Extension.php';
require __DIR__ . '/../../tests/support/StockMatomo.php';

$quick = in_array('--quick', $argv, true);
// --large: the background section also measures a 10,000,000-row table (about 5 more minutes).
$large = in_array('--large', $argv, true);
// --only=claim,reap,... runs some sections: claim, drain, reap, release, recovery, overheads, background, matomo.
$only = null;
foreach ($argv as $arg) {
    if (str_starts_with($arg, '--only=')) {
        $only = explode(',', substr($arg, 7));
    }
}
const SECTIONS = ['claim', 'drain', 'reap', 'release', 'recovery', 'overheads', 'background', 'matomo'];
foreach ($only ?? [] as $name) {
    in_array($name, SECTIONS, true) || throw new \InvalidArgumentException("unknown section '$name'; sections: " . implode(', ', SECTIONS));
}
$wanted = fn (string $section): bool => $only === null || in_array($section, $only, true);
const PREFIX = 'matomo_';

function say(string $s = ''): void
{
    echo $s, "\n";
    flush();
}

function median(array $xs): float
{
    sort($xs);
    return $xs ? (float) $xs[intdiv(count($xs), 2)] : 0.0;
}

function p90(array $xs): float
{
    sort($xs);
    return $xs ? (float) $xs[intdiv(count($xs) * 9, 10)] : 0.0;
}

function table(array $header, array $rows): void
{
    $widths = array_map('strlen', $header);
    foreach ($rows as $r) {
        foreach (array_values($r) as $i => $cell) {
            $widths[$i] = max($widths[$i], strlen((string) $cell));
        }
    }
    $line = fn (array $cells) => '| ' . implode(' | ', array_map(fn ($c, $w) => str_pad((string) $c, $w), array_values($cells), $widths)) . ' |';
    say($line($header));
    say('|' . implode('|', array_map(fn ($w) => str_repeat('-', $w + 2), $widths)) . '|');
    foreach ($rows as $r) {
        say($line($r));
    }
    say();
}

function url(array $c): string
{
    return sprintf('mysql://%s:%s@%s:%s/%s?tables_prefix=%s', rawurlencode($c['username']), rawurlencode($c['password']),
        $c['host'], $c['port'], $c['dbname'], $c['tables_prefix']);
}

/** The Rust side of the measurements (benches/raw.rs), already built by scripts/bench. */
function raw(array $args): array
{
    $cmd = array_merge(['cargo', 'bench', '--quiet', '--bench', 'raw', '--'], $args);
    $proc = proc_open($cmd, [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, __DIR__ . '/../..');
    $out = stream_get_contents($pipes[1]);
    $err = stream_get_contents($pipes[2]);
    if (proc_close($proc) !== 0) {
        throw new \RuntimeException("raw bench failed: $err");
    }
    $lines = array_values(array_filter(explode("\n", trim($out)), fn ($l) => str_starts_with($l, '{')));
    return json_decode(end($lines), true, flags: JSON_THROW_ON_ERROR);
}

function rss_of(string $code, bool $extension): int
{
    $cmd = $extension ? TestDatabase::php(['-r', $code]) : [PHP_BINARY, '-r', $code];
    return (int) trim((string) shell_exec(implode(' ', array_map('escapeshellarg', $cmd))));
}

/** The whole machine's busy CPU time so far (user, nice, system, irq, softirq), seconds. */
function machine_cpu_seconds(): float
{
    $cpu = preg_split('/\s+/', trim(strtok((string) file_get_contents('/proc/stat'), "\n")));
    return ((int) $cpu[1] + (int) $cpu[2] + (int) $cpu[3] + (int) $cpu[6] + (int) $cpu[7]) / 100;
}

/** @return array{0: float, 1: mixed} seconds and what $f returned */
function timed(callable $f): array
{
    $t = hrtime(true);
    $result = $f();
    return [(hrtime(true) - $t) / 1e9, $result];
}

function fmt_s(float $s): string
{
    return $s >= 1 ? sprintf('%.2f s', $s) : sprintf('%.0f ms', $s * 1000);
}

function fmt_us(float $us): string
{
    return $us >= 1000 ? sprintf('%.2f ms', $us / 1000) : sprintf('%.0f µs', $us);
}

/**
 * What the extension costs one `climulti:request` child, timed apart from Matomo's own work
 * (which varies by more than this between runs): a PHP process whose command line is a child's
 * registers and unregisters as the plugin makes it do, against the same process that only
 * configures the extension. Alternating, $n each; medians.
 */
function child_cost(array $db, int $children, float $stockWall, int $n): void
{
    $code = 'Matomo\\ArchiveClaim\\configure(json_decode($argv[1], true)); $t0 = hrtime(true);'
        . ' if ($argv[2] === "register") { Matomo\\ArchiveClaim\\register_process(); } $t1 = hrtime(true);'
        . ' if ($argv[2] === "register") { Matomo\\ArchiveClaim\\unregister_process(); } $t2 = hrtime(true);'
        . ' echo ($t1 - $t0) / 1e6, " ", ($t2 - $t1) / 1e6;';
    // A detached child names its parent (runid=); a batch of one is found through its ancestry
    // (this process, through the shell of shell_exec).
    $kinds = ['detached (runid=, most children)' => ['runid=' . getmypid()], 'batch of one (no runid)' => []];
    $samples = [];
    for ($i = 0; $i < $n; $i++) {
        foreach ($kinds as $kind => $extra) {
            foreach (['only configure()', 'register + unregister'] as $what) {
                $args = array_merge(['-r', $code, json_encode($db), $what === 'only configure()' ? 'none' : 'register', 'climulti:request'], $extra);
                $t = hrtime(true);
                $out = (string) shell_exec(implode(' ', array_map('escapeshellarg', TestDatabase::php($args))));
                $wall = (hrtime(true) - $t) / 1e6;
                [$reg, $unreg] = array_map('floatval', explode(' ', trim($out)) + [0, 0]);
                $samples[$kind][$what][] = ['wall' => $wall, 'register' => $reg, 'unregister' => $unreg];
            }
        }
    }
    $pdo = new PDO(sprintf('mysql:host=%s;port=%d;dbname=%s', $db['host'], $db['port'], $db['dbname']), $db['username'], $db['password']);
    $trips = [];
    for ($i = 0; $i < 200; $i++) {
        $t = hrtime(true);
        $pdo->query('SELECT 1')->fetchColumn();
        $trips[] = (hrtime(true) - $t) / 1e6;
    }
    $trip = median($trips);
    say(sprintf('What one archiving child pays (a PHP process with a climulti:request command line, the extension loaded, %d runs each, alternating; medians; '
        . 'one database round trip, SELECT 1 through PDO: %.2f ms):', $n, $trip));
    $rows = [];
    $worst = 0.0;
    foreach ($samples as $kind => $by) {
        $col = fn (string $what, string $k) => median(array_column($by[$what], $k));
        $added = $col('register + unregister', 'wall') - $col('only configure()', 'wall');
        $worst = max($worst, $added);
        $rows[] = [$kind, sprintf('%.2f ms', $col('register + unregister', 'register')), sprintf('%.2f ms', $col('register + unregister', 'unregister')),
            sprintf('%.1f ms', $col('only configure()', 'wall')), sprintf('%.1f ms', $col('register + unregister', 'wall')), sprintf('%+.1f ms', $added)];
    }
    table(['child', 'register_process()', 'unregister_process()', 'process wall, configure() only', 'process wall, registered', 'added'], $rows);
    say(sprintf('All %d children of the run above at the larger figure, one after another: %.2f s, %.1f%% of the stock run\'s %.2f s '
        . '(an upper bound: Matomo runs up to three children at once).', $children, $children * max(0.0, $worst) / 1000,
        100 * $children * max(0.0, $worst) / 1000 / max(0.001, $stockWall), $stockWall));
    say();
}

/**
 * A new database whose Matomo invalidations table holds $size queued rows, and how far apart
 * (in ids) the 10,000 rows to put in progress are: the table of the reap and background sections.
 * Generated by the server from MariaDB's sequence engine (seq_1_to_N), a million rows per
 * statement: 10,000,000 rows load in about a minute. Site s holds rows s, s + 50, ... with one
 * day each (distinct archives), so the rows in progress spread over every site.
 *
 * @return array{0: array<string, string>, 1: PDO, 2: int} config, connection, every
 */
function invalidations_table(int $size): array
{
    $config = TestDatabase::create(PREFIX);
    $pdo = TestDatabase::matomoPdo($config);
    for ($from = 1; $from <= $size; $from += 1000000) {
        $to = min($size, $from + 999999);
        $pdo->exec("INSERT INTO matomo_archive_invalidations (idarchive, name, idsite, date1, date2, period, ts_invalidated, status)
            SELECT NULL, 'done', 1 + seq % 50, DATE '2000-01-01' + INTERVAL seq DIV 50 DAY, DATE '2000-01-01' + INTERVAL seq DIV 50 DAY,
                   1, NOW(), 0 FROM seq_{$from}_to_{$to}");
    }
    $pdo->query('ANALYZE TABLE matomo_archive_invalidations')->fetchAll();
    return [$config, $pdo, intdiv($size, 10000)];
}

// ---------------------------------------------------------------------------------------------
$admin = TestDatabase::admin();
$cpu = preg_match('/^model name\s*:\s*(.+)$/m', (string) file_get_contents('/proc/cpuinfo'), $m) ? $m[1] : 'unknown CPU';
preg_match('/^MemTotal:\s+(\d+)/m', (string) file_get_contents('/proc/meminfo'), $mem);
say('# matomo_archive_claim benchmarks' . ($quick ? ' (quick)' : '') . ($only ? ' (sections: ' . implode(', ', $only) . ')' : ''));
say();
say(sprintf('Machine: %s, %d cores, %.0f GiB RAM, Linux %s; PHP %s; MariaDB %s (innodb_flush_log_at_trx_commit = %s); %s.',
    $cpu, (int) shell_exec('nproc'), $mem[1] / 1048576, php_uname('r'), PHP_VERSION,
    $admin->query('SELECT VERSION()')->fetchColumn(), $admin->query('SELECT @@innodb_flush_log_at_trx_commit')->fetchColumn(),
    date('Y-m-d')));
say('Database on the same machine over TCP loopback; the extension built with --release.');
say();

// 1. Claim latency -----------------------------------------------------------------------------
if ($wanted('claim')) {
    $n = $quick ? 500 : 3000;
    $config = TestDatabase::create(PREFIX);
    $pdo = TestDatabase::matomoPdo($config);
    $ids = TestDatabase::queueMany($pdo, PREFIX, 3 * $n + 1);
    Claim\configure($config);
    Claim\claim_invalidation(array_pop($ids)); // connects and registers before anything is timed
    $extIds = array_slice($ids, 0, $n);
    $pdoIds = array_slice($ids, $n, $n);
    $rawIds = array_slice($ids, 2 * $n, $n);
    $matomoClaim = fn (int $id) => $pdo->prepare('UPDATE `matomo_archive_invalidations` SET status = ?, processing_host = ?, process_id = ?, ts_started = NOW() WHERE idinvalidation = ? AND status = ?')
        ->execute([1, gethostname() ?: null, (string) getmypid(), $id, 0]);
    // The physical limit: the same UPDATE as a prepared statement on a raw client connection
    // (mysqli, PHP's thin C client: one round trip per execute), and a bare round trip.
    $mysqli = new \mysqli($config['host'], $config['username'], $config['password'], $config['dbname'], (int) $config['port']);
    $mysqli->query("SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO'");
    $rawStmt = $mysqli->prepare('UPDATE `matomo_archive_invalidations` SET status = 1, processing_host = ?, process_id = ?, ts_started = NOW() WHERE idinvalidation = ? AND status = 0');
    $host = gethostname() ?: null;
    $myPid = (string) getmypid();
    $rawId = 0;
    $rawStmt->bind_param('ssi', $host, $myPid, $rawId);
    $pingStmt = $mysqli->prepare('SELECT 1');
    $ext = $viaPdo = $raw = $ping = [];
    foreach (array_chunk(range(0, $n - 1), 100) as $block) { // interleaved, so drift hits all alike
        foreach ($block as $i) {
            $t = hrtime(true);
            Claim\claim_invalidation($extIds[$i]) || throw new \RuntimeException('claim lost');
            $ext[] = (hrtime(true) - $t) / 1000;
        }
        foreach ($block as $i) {
            $t = hrtime(true);
            $matomoClaim($pdoIds[$i]);
            $viaPdo[] = (hrtime(true) - $t) / 1000;
        }
        foreach ($block as $i) {
            $rawId = $rawIds[$i];
            $t = hrtime(true);
            $rawStmt->execute();
            $raw[] = (hrtime(true) - $t) / 1000;
        }
        foreach ($block as $i) {
            $t = hrtime(true);
            $pingStmt->execute();
            $pingStmt->get_result();
            $ping[] = (hrtime(true) - $t) / 1000;
        }
    }
    $r = ['raw_update_us' => median($raw), 'raw_update_p90_us' => p90($raw), 'select1_us' => median($ping), 'select1_p90_us' => p90($ping)];
    say("## 1. Claim latency ($n claims each, interleaved in blocks of 100; median)");
    say();
    table(['path', 'median', 'p90', 'vs raw UPDATE', 'vs SELECT 1'], [
        ['claim_invalidation() (extension)', fmt_us(median($ext)), fmt_us(p90($ext)), sprintf('%.2fx', median($ext) / $r['raw_update_us']), sprintf('%.2fx', median($ext) / $r['select1_us'])],
        ["Matomo's claim through PDO (emulated prepares)", fmt_us(median($viaPdo)), fmt_us(p90($viaPdo)), sprintf('%.2fx', median($viaPdo) / $r['raw_update_us']), sprintf('%.2fx', median($viaPdo) / $r['select1_us'])],
        ['the same UPDATE, raw client (mysqli, prepared)', fmt_us($r['raw_update_us']), fmt_us($r['raw_update_p90_us']), '1.00x', sprintf('%.2fx', $r['raw_update_us'] / $r['select1_us'])],
        ['SELECT 1, raw client (one round trip)', fmt_us($r['select1_us']), fmt_us($r['select1_p90_us']), '', '1.00x'],
    ]);
    say(sprintf('Extension vs PDO at the median: %.2fx (below 1: faster).', median($ext) / median($viaPdo)));
    say();
    TestDatabase::drop($config);
}

// 2. Concurrent claiming -----------------------------------------------------------------------
if ($wanted('drain')) {
    $rows = $quick ? 20000 : 100000;
    $config = TestDatabase::create(PREFIX);
    $pdo = TestDatabase::matomoPdo($config);
    TestDatabase::queueMany($pdo, PREFIX, $rows);
    $out = [];
    foreach ([1, 4, 16, 64] as $p) {
        $pdo->exec('UPDATE matomo_archive_invalidations SET status = 0, processing_host = NULL, process_id = NULL, ts_started = NULL');
        $files = [];
        $procs = [];
        $t = microtime(true);
        for ($i = 0; $i < $p; $i++) {
            $files[$i] = tempnam(sys_get_temp_dir(), 'drain');
            // Finished drainers exit holding their claims; automatic reaping would (rightly) re-queue those.
            $procs[] = proc_open(TestDatabase::php(['-d', 'matomo_archive_claim.auto_reap=0', __DIR__ . '/drain-worker.php', json_encode($config), $files[$i]]), [], $pipes);
        }
        foreach ($procs as $proc) {
            proc_close($proc);
        }
        $elapsed = microtime(true) - $t;
        $won = [];
        foreach ($files as $f) {
            $won = array_merge($won, array_filter(explode("\n", (string) file_get_contents($f))));
            unlink($f);
        }
        $twice = count($won) - count(array_unique($won));
        $claimed = (int) $pdo->query('SELECT COUNT(*) FROM matomo_archive_invalidations WHERE status = 1')->fetchColumn();
        $out[] = [$p, number_format($rows), sprintf('%.1f s', $elapsed), number_format($rows / $elapsed), $twice, $claimed === $rows ? 'all' : "$claimed!"];
    }
    say("## 2. Concurrent claiming: P processes drain " . number_format($rows) . ' queued rows');
    say();
    table(['processes', 'rows', 'wall time', 'claims/s', 'claimed twice', 'claimed'], $out);
    TestDatabase::drop($config);
}

// 3. Reaping at scale --------------------------------------------------------------------------
if ($wanted('reap')) {
    say('## 3. Reaping at scale: 10,000 rows in progress across 50 hosts, 10 of them dead (about 2,000 orphans)');
    say();
    say('Medians of 3 runs; the rows are put back in progress between runs. Matomo\'s path: fetch the rows in progress,');
    say('keep those older than the one-day timeout, release them row by row (a duplicate check, then an autocommit');
    say('DELETE or UPDATE each), as `Model::releaseInProgressInvalidations()` does.');
    say();
    $out = [];
    foreach ($quick ? [100000] : [100000, 1000000] as $size) {
        [$config, $pdo, $every] = invalidations_table($size);
        // 50 hosts, 4 archivers each; hosts 40..49 stopped heartbeating ten minutes ago, and their
        // rows are two days old, so Matomo's one-day timeout releases the same 2,000 rows.
        $inProgress = "idinvalidation % $every = 0";
        // The k-th row in progress belongs to archiver k % 200 (pid 1000 + k % 200) on host k % 50.
        $setup = function () use ($pdo, $inProgress, $every) {
            $pdo->exec("UPDATE matomo_archive_invalidations SET status = 1,
                processing_host = CONCAT('bench-host', (idinvalidation DIV $every) % 50), process_id = 1000 + (idinvalidation DIV $every) % 200,
                ts_started = IF((idinvalidation DIV $every) % 50 >= 40, NOW() - INTERVAL 2 DAY, NOW() - INTERVAL 1 HOUR)
                WHERE $inProgress");
        };
        $setup();
        Claim\configure($config);
        Claim\install_schema(); // creates the registry
        $pdo->exec('TRUNCATE matomo_archive_claim_process');
        $reg = $pdo->prepare('INSERT INTO matomo_archive_claim_process (host, pid, boot_id, pid_namespace, started_at, registered_at, heartbeat_at)
            VALUES (?, ?, ?, 1, 0, NOW() - INTERVAL 3 DAY, IF(? >= 40, NOW() - INTERVAL 10 MINUTE, NOW()))');
        for ($k = 0; $k < 200; $k++) {
            $reg->execute(['bench-host' . ($k % 50), 1000 + $k, 'bench-boot', $k % 50]);
        }
        $dead = (int) $pdo->query("SELECT COUNT(*) FROM matomo_archive_invalidations WHERE status = 1 AND ts_started < NOW() - INTERVAL 1 DAY")->fetchColumn();

        // Each measurement three times, the rows put back in progress before each real reap.
        $runs = function (callable $f, bool $writes) use ($setup): array {
            $times = [];
            $result = null;
            for ($i = 0; $i < 3; $i++) {
                if ($writes) {
                    $setup();
                }
                [$times[], $result] = timed($f);
            }
            return [median($times), $result];
        };
        $matomo = new StockMatomo($pdo, '`' . PREFIX . 'archive_invalidations`');
        $matomoReset = function () use ($pdo, $matomo) {
            $rows = $pdo->query('SELECT idinvalidation, idsite, ts_started FROM matomo_archive_invalidations WHERE status = 1 AND ts_started IS NOT NULL')->fetchAll(PDO::FETCH_ASSOC);
            $cutoff = (int) $pdo->query('SELECT UNIX_TIMESTAMP(NOW())')->fetchColumn() - 86400;
            $old = array_column(array_filter($rows, fn ($r) => strtotime($r['ts_started'] . ' UTC') < $cutoff), 'idinvalidation');
            return $matomo->release($old);
        };
        [$dry, $dryReport] = $runs(fn () => Claim\reap_orphans(['dry_run' => true]), false);
        [$ours, $report] = $runs(fn () => Claim\reap_orphans(), true);
        [$theirs, $theirReleased] = $runs($matomoReset, true);
        Claim\install_schema(['index' => true]);
        $setup();
        [$dryIndexed] = $runs(fn () => Claim\reap_orphans(['dry_run' => true]), false);
        [$indexed, $report2] = $runs(fn () => Claim\reap_orphans(), true);
        $out[] = [number_format($size), number_format($dead), fmt_s($dry), sprintf('%s (%d)', fmt_s($ours), $report['released']),
            fmt_s($dryIndexed), sprintf('%s (%d)', fmt_s($indexed), $report2['released']),
            sprintf('%s (%d)', fmt_s($theirs), $theirReleased),
            sprintf('%.3fx / %.3fx', $ours / $theirs, $dry / $theirs), sprintf('%.3fx / %.3fx', $indexed / $theirs, $dryIndexed / $theirs)];
        $dryReport['would_reset'] + $dryReport['would_delete'] === $report['released'] || say('(!) the dry run predicted another count than the reap released');
        TestDatabase::drop($config);
    }
    table(['table rows', 'orphans', 'dry run', 'reap_orphans', 'dry run, index', 'reap_orphans, index', "Matomo's path (PHP, row by row)",
        'vs Matomo: reap / dry', 'with index: reap / dry'], $out);
    say('For reference, the set-based prototype in plain PHP (issue 10) took 45 ms at 1,000,000 rows with the index: 0.036x Matomo\'s path then.');
    $pid = raw(['pidcheck', '20000']);
    $ps = [];
    for ($i = 0; $i < 200; $i++) {
        $t = hrtime(true);
        shell_exec('ps -o lstart= -p ' . getmypid());
        $ps[] = (hrtime(true) - $t) / 1000;
    }
    say(sprintf('Checking one local pid: %s through /proc (what the reaper does) vs %s spawning `ps -o lstart= -p PID` (%.0fx).',
        fmt_us($pid['proc_check_us']), fmt_us(median($ps)), median($ps) / $pid['proc_check_us']));
    say('(Matomo releases only by the one-day timeout, so its reset frees these rows a day late; ours frees them on proof, with the same release semantics.)');
    say();
}

// 3b. Giving claims back -----------------------------------------------------------------------
if ($wanted('release')) {
    say('## 3b. Giving many claims back: release_invalidations() and complete_invalidations()');
    say();
    say("This process holds the rows (distinct archives); Matomo's path is the same PHP row by row (release) or one");
    say('unfenced DELETE ... IN (...) (complete) through PDO.');
    say();
    $config = TestDatabase::create(PREFIX);
    $pdo = TestDatabase::matomoPdo($config);
    Claim\configure($config);
    $holdAll = function (array $ids) use ($pdo): void {
        foreach (array_chunk($ids, 10000) as $chunk) {
            $pdo->prepare('UPDATE matomo_archive_invalidations SET status = 1, processing_host = ?, process_id = ?, ts_started = NOW()
                WHERE idinvalidation IN (' . implode(',', $chunk) . ')')->execute([gethostname(), (string) getmypid()]);
        }
    };
    // Ours gives back only what this request claimed, so it claims them through the extension.
    $claimAll = function (array $ids): void {
        foreach ($ids as $id) {
            Claim\claim_invalidation($id) || throw new \RuntimeException("claim of $id lost");
        }
    };
    $matomo = new StockMatomo($pdo, '`' . PREFIX . 'archive_invalidations`');
    $out = [];
    foreach ($quick ? [10000] : [20000, 100000] as $n) {
        $pdo->exec('TRUNCATE matomo_archive_invalidations');
        $ids = TestDatabase::queueMany($pdo, PREFIX, $n);
        $claimAll($ids);
        [$ours, $changed] = timed(fn () => Claim\release_invalidations($ids));
        $holdAll($ids);
        [$theirs, $theirChanged] = timed(fn () => $matomo->release($ids));
        $out[] = ['release_invalidations()', number_format($n), sprintf('%s (%s)', fmt_s($ours), number_format($changed)),
            sprintf('%s (%s)', fmt_s($theirs), number_format($theirChanged)), sprintf('%.3fx', $ours / $theirs)];
    }
    $n = $quick ? 30000 : 150000;
    $pdo->exec('TRUNCATE matomo_archive_invalidations');
    $ids = TestDatabase::queueMany($pdo, PREFIX, $n);
    $claimAll($ids);
    [$ours, $changed] = timed(fn () => Claim\complete_invalidations($ids));
    $ids = TestDatabase::queueMany($pdo, PREFIX, $n);
    $holdAll($ids);
    [$theirs, $theirChanged] = timed(fn () => $matomo->complete($ids));
    $out[] = ['complete_invalidations()', number_format($n), sprintf('%s (%s)', fmt_s($ours), number_format($changed)),
        sprintf('%s (%s)', fmt_s($theirs), number_format($theirChanged)), sprintf('%.3fx', $ours / $theirs)];
    table(['operation', 'ids', 'ours (rows changed)', "Matomo's path", 'ours vs Matomo'], $out);
    TestDatabase::drop($config);
}

// 4. Recovery time -----------------------------------------------------------------------------
if ($wanted('recovery')) {
    say('## 4. Recovery time: from kill -9 to the rows back in the queue (default heartbeat 5 s, lease 60 s)');
    say();
    $config = TestDatabase::create(PREFIX);
    $pdo = TestDatabase::matomoPdo($config);
    Claim\configure($config);
    $out = [];
    $queued = fn (int $id) => (int) $pdo->query("SELECT status FROM matomo_archive_invalidations WHERE idinvalidation = $id")->fetchColumn() === 0;
    $waitQueued = function (int $id, float $from, float $limit) use ($queued): ?float {
        while (!$queued($id)) {
            if (microtime(true) - $from > $limit) {
                return null;
            }
            usleep(10000);
        }
        return microtime(true) - $from;
    };
    $server = SimulatedServer::start('bench-local', $config, ['heartbeat_interval' => 5, 'lease' => 60, 'auto_reap' => 1], false);
    [$a, $b] = TestDatabase::queue($pdo, PREFIX, [['idsite' => 1], ['idsite' => 2]]);
    $server->send(['cmd' => 'claim', 'ids' => [$b]]); // the agent: a live process whose heartbeat thread reaps
    $victim = $server->send(['cmd' => 'spawn', 'ids' => [$a]]);
    $server->send(['cmd' => 'kill', 'pid' => $victim['pid']]);
    $t = microtime(true);
    Claim\reap_orphans();
    $out[] = ['same host, next reap_orphans() call (pid gone)', sprintf('%.0f ms', (microtime(true) - $t) * 1000)];
    [$c, $watched] = TestDatabase::queue($pdo, PREFIX, [['idsite' => 3], ['idsite' => 6]]);
    $victim = $server->send(['cmd' => 'spawn', 'ids' => [$c]]);
    $server->send(['cmd' => 'kill', 'pid' => $victim['pid']]);
    $took = $waitQueued($c, microtime(true), 30);
    $out[] = ['same host, automatic, killed right after its first claim (seen at the next second\'s read of the registry)',
        $took === null ? 'not within 30 s!' : sprintf('%.2f s', $took)];
    $victim = $server->send(['cmd' => 'spawn', 'ids' => [$watched]]);
    sleep(2); // the host's reaper reads whom to watch every second
    $server->send(['cmd' => 'kill', 'pid' => $victim['pid']]);
    $took = $waitQueued($watched, microtime(true), 30);
    $out[] = ['same host, automatic, a process it watches (the kernel wakes the reaper through a pidfd)',
        $took === null ? 'not within 30 s!' : sprintf('%.0f ms', $took * 1000)];
    $server->stop();
    if (SimulatedServer::canIsolate()) {
        $s1 = SimulatedServer::start('bench-s1', $config, ['heartbeat_interval' => 5, 'lease' => 60, 'auto_reap' => 1]);
        $s2 = SimulatedServer::start('bench-s2', $config, ['heartbeat_interval' => 5, 'lease' => 60, 'auto_reap' => 1]);
        [$d, $e] = TestDatabase::queue($pdo, PREFIX, [['idsite' => 4], ['idsite' => 5]]);
        $s1->send(['cmd' => 'claim', 'ids' => [$e]]);
        $s2->send(['cmd' => 'claim', 'ids' => [$d]]);
        $s2->killWhole();
        $took = $waitQueued($d, microtime(true), 120);
        $out[] = ['another host lost power, automatic through the lease', $took === null ? 'not within 120 s!' : sprintf('%.1f s', $took)];
        $s1->stop();
    } else {
        $out[] = ['another host lost power, automatic through the lease', 'skipped: needs root for unshare'];
    }
    $out[] = ["Matomo alone (archive_failure_recovery_timeout)", '86,400 s'];
    table(['scenario', 'kill to queued'], $out);
    TestDatabase::drop($config);
}

// 5. Overheads ---------------------------------------------------------------------------------
if ($wanted('overheads')) {
    say('## 5. Overheads');
    say();
    $config = TestDatabase::create(PREFIX);
    $pdo = TestDatabase::matomoPdo($config);
    Claim\configure($config);
    Claim\install_schema();
    $hb = raw(['heartbeats', url($config), PREFIX, '1000', $quick ? '3' : '10']);
    say(sprintf('Heartbeats: 1,000 registered processes at one beat per 5 s send 200 UPDATEs/s; this server sustained %s heartbeat UPDATEs/s from 4 connections, so they take about %.1f%% of its capacity.',
        number_format($hb['heartbeats_per_second']), 200 / $hb['heartbeats_per_second'] * 100));
    $rssCode = 'preg_match("/^VmRSS:\\s+(\\d+)/m", file_get_contents("/proc/self/status"), $m); echo $m[1];';
    $bare = rss_of($rssCode, false);
    $loaded = rss_of($rssCode, true);
    $working = rss_of('Matomo\ArchiveClaim\configure(' . var_export($config, true) . '); Matomo\ArchiveClaim\in_progress(); Matomo\ArchiveClaim\register_process(); usleep(200000); ' . $rssCode, true);
    say(sprintf('Resident memory of a PHP CLI process: %s KiB without the extension, %s KiB with it loaded (+%s), %s KiB once connected with its heartbeat thread running (+%s).',
        number_format($bare), number_format($loaded), number_format($loaded - $bare), number_format($working), number_format($working - $bare)));
    [$id] = TestDatabase::queue($pdo, PREFIX, [['idsite' => 1]]);
    $cycles = $quick ? 100000 : 1000000;
    $flush = $admin->query('SELECT @@innodb_flush_log_at_trx_commit')->fetchColumn();
    $admin->exec('SET GLOBAL innodb_flush_log_at_trx_commit = 2'); // memory, not durability, is measured here
    $t = microtime(true);
    $lines = explode("\n", trim((string) shell_exec(implode(' ', array_map('escapeshellarg', TestDatabase::php(['-d', 'matomo_archive_claim.auto_reap=0',
        __DIR__ . '/cycle-worker.php', json_encode($config), (string) $id, (string) $cycles, (string) ($cycles / 10)]))))));
    $admin->exec("SET GLOBAL innodb_flush_log_at_trx_commit = $flush");
    $points = array_map(fn ($l) => json_decode($l, true), $lines);
    say(sprintf('Memory over %s claim/release cycles in one process (%.0f s): ', number_format($cycles), microtime(true) - $t)
        . implode(', ', array_map(fn ($p) => number_format($p['cycles']) . ': ' . number_format($p['rss_kib']) . ' KiB', $points)) . '.');
    $after1 = $points[1]['rss_kib'] ?? 0;
    $last = end($points)['rss_kib'] ?? 0;
    say(sprintf('Growth after the first %s cycles: %+d KiB.', number_format($cycles / 10), $last - $after1));
    TestDatabase::drop($config);
}


// 6. Background load ---------------------------------------------------------------------------
if ($wanted('background')) {
    // H simulated servers, each with one registered process whose heartbeat thread reaps
    // automatically (auto_reap=1), each holding 1/H of the 10,000 rows in progress. Measured:
    // mariadbd's own CPU time (utime + stime in /proc) and its statement counters over one
    // lease, so every host's periodic look falls in the window once whatever its phase. The
    // default heartbeat (5 s); a lease of 20 s instead of 60 s keeps the section to minutes
    // (once-per-lease work then weighs three times what it does with the default lease).
    $hostCounts = $quick ? [4] : [10, 50];
    $ini = ['heartbeat_interval' => $quick ? 2 : 5, 'lease' => $quick ? 10 : 20, 'auto_reap' => 1];
    $window = (float) $ini['lease'];
    $sizes = $quick ? [100000] : ($large ? [100000, 1000000, 10000000] : [100000, 1000000]);
    $restart = getenv('MATOMO_ARCHIVE_CLAIM_TEST_DB_RESTART') ?: throw new \RuntimeException('the background section needs the throwaway MariaDB of with-mariadb.sh');
    $dbPid = (int) trim((string) file_get_contents(dirname($restart) . '/mysqld.pid'));
    $ticks = (int) trim((string) shell_exec('getconf CLK_TCK')) ?: 100;
    $dbCpu = function () use ($dbPid, $ticks): float { // seconds of CPU mariadbd used so far
        $fields = explode(' ', substr((string) strrchr((string) file_get_contents("/proc/$dbPid/stat"), ')'), 2));
        return ((int) $fields[11] + (int) $fields[12]) / $ticks;
    };
    $counters = function () use ($admin): array {
        $rows = $admin->query("SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Rows_read')")->fetchAll(PDO::FETCH_KEY_PAIR);
        return array_map('intval', array_change_key_case($rows, CASE_LOWER));
    };
    $measure = function () use ($dbCpu, $counters, $window): array {
        [$c0, $s0, $t0] = [$dbCpu(), $counters(), hrtime(true)];
        usleep((int) ($window * 1e6));
        [$c1, $s1, $t1] = [$dbCpu(), $counters(), hrtime(true)];
        $wall = ($t1 - $t0) / 1e9;
        return ['cpu_ms_s' => ($c1 - $c0) * 1000 / $wall, 'qps' => ($s1['questions'] - $s0['questions'] - 1) / $wall,
            'rows_s' => ($s1['rows_read'] - $s0['rows_read']) / $wall];
    };
    // The version measured before this one (per-host scan every heartbeat), if built:
    // MATOMO_ARCHIVE_CLAIM_BENCH_BEFORE=path/to/its .so (see the README).
    $versions = ['this version' => TestDatabase::extensionPath()];
    if (($before = getenv('MATOMO_ARCHIVE_CLAIM_BENCH_BEFORE')) && is_file($before)) {
        $rev = trim((string) shell_exec('git -C ' . escapeshellarg(dirname($before, 3)) . ' rev-parse --short HEAD 2>/dev/null'));
        $versions['before' . ($rev !== '' ? " ($rev)" : '')] = $before;
    }
    $schema = function (string $so, array $config, array $options): void {
        $out = shell_exec(implode(' ', array_map('escapeshellarg', [PHP_BINARY, '-d', "extension=$so", '-r',
            'Matomo\ArchiveClaim\configure(json_decode($argv[1], true)); echo json_encode(Matomo\ArchiveClaim\install_schema(json_decode($argv[2], true)));',
            json_encode($config), json_encode($options)])));
        json_decode((string) $out, true) !== null || throw new \RuntimeException("install_schema printed: $out");
    };
    $isolated = SimulatedServer::canIsolate();
    say('## 6. Background load: ' . implode(' and ', $hostCounts) . " hosts with automatic reaping (heartbeat {$ini['heartbeat_interval']} s, lease {$ini['lease']} s), 10,000 rows in progress");
    say();
    say("Each host a simulated server" . ($isolated ? ' (own host name and pid namespace)' : ' (NOT isolated: no root, so they share one host name)')
        . ' with one registered process holding 10,000 / H rows in progress; its heartbeat thread beats and reaps.');
    say(sprintf('Measured over %.0f s (one lease) after a warm-up of %d s: the database server\'s CPU time (utime + stime of mariadbd', $window, $ini['heartbeat_interval'] + 2));
    say('in /proc) per wall second, statements received (Questions) and rows read (Rows_read) per second.'
        . ($large ? '' : ' (--large adds a 10,000,000-row table.)'));
    say();
    $idle = $measure();
    say(sprintf('The idle server (nobody connected): %.1f ms/s (%.2f%% of a core), %.1f statements/s.', $idle['cpu_ms_s'], $idle['cpu_ms_s'] / 10, $idle['qps']));
    say();
    $results = []; // [version][size][hosts][indexed] => measurement
    foreach ($sizes as $size) {
        foreach ($versions as $version => $so) {
            $t = microtime(true);
            [$config, $pdo, $every] = invalidations_table($size);
            $schema($so, $config, ['index' => false]);
            $loaded = microtime(true) - $t;
            $ids = array_map('intval', $pdo->query("SELECT idinvalidation FROM matomo_archive_invalidations WHERE idinvalidation % $every = 0")->fetchAll(PDO::FETCH_COLUMN));
            foreach ([false, true] as $indexed) {
                if ($indexed) {
                    $schema($so, $config, ['index' => true]);
                }
                $hasIndex = (bool) $pdo->query("SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()
                    AND TABLE_NAME = 'matomo_archive_invalidations' AND COLUMN_NAME = 'status' AND SEQ_IN_INDEX = 1")->fetchColumn();
                $hasIndex === $indexed || throw new \RuntimeException('the index on status is ' . ($hasIndex ? 'there' : 'missing'));
                foreach ($hostCounts as $hostCount) {
                    $servers = [];
                    $saved = getenv('MATOMO_ARCHIVE_CLAIM_EXT');
                    putenv("MATOMO_ARCHIVE_CLAIM_EXT=$so"); // the agents load this version
                    try {
                        foreach (array_chunk($ids, (int) ceil(count($ids) / $hostCount)) as $h => $mine) {
                            $server = SimulatedServer::start("bg-host$h", $config, $ini);
                            $server->send(['cmd' => 'register']);
                            count($server->send(['cmd' => 'claim', 'ids' => $mine])['won']) === count($mine) || throw new \RuntimeException('a claim was lost');
                            $servers[] = $server;
                        }
                    } finally {
                        putenv($saved === false ? 'MATOMO_ARCHIVE_CLAIM_EXT' : "MATOMO_ARCHIVE_CLAIM_EXT=$saved");
                    }
                    sleep($ini['heartbeat_interval'] + 2);
                    $m = $measure();
                    $m['held'] = (int) $pdo->query('SELECT COUNT(*) FROM matomo_archive_invalidations WHERE status = 1')->fetchColumn();
                    // The load history (src/load.rs): one upsert per busy process and minute, never
                    // a read of archive_invalidations. Its own cost, timed here on this table size:
                    // 1,000 upserts of the heartbeat thread's statement (50 hosts, one minute each).
                    $pdo->exec('CREATE TABLE IF NOT EXISTS matomo_archive_claim_load (minute INT UNSIGNED NOT NULL, host VARCHAR(100) NOT NULL,
                        claimed INT UNSIGNED NOT NULL DEFAULT 0, finished INT UNSIGNED NOT NULL DEFAULT 0, released INT UNSIGNED NOT NULL DEFAULT 0,
                        in_progress INT UNSIGNED NOT NULL DEFAULT 0, processes SMALLINT UNSIGNED NOT NULL DEFAULT 0, PRIMARY KEY (minute, host)) ENGINE=InnoDB');
                    $upsert = $pdo->prepare('INSERT INTO matomo_archive_claim_load (minute, host, claimed, finished, released, in_progress, processes)
                        VALUES (?, ?, ?, ?, ?, ?, 1) ON DUPLICATE KEY UPDATE claimed = claimed + VALUES(claimed), finished = finished + VALUES(finished),
                        released = released + VALUES(released), in_progress = in_progress + VALUES(in_progress), processes = processes + 1');
                    $lat = [];
                    for ($i = 0; $i < 1000; $i++) {
                        $t0 = hrtime(true);
                        $upsert->execute([1700000000 + 60 * intdiv($i, 50), 'bench-host' . ($i % 50), 3, 2, 1, 4]);
                        $lat[] = (hrtime(true) - $t0) / 1e3;
                    }
                    sort($lat);
                    $m['load_upsert_us'] = $lat[500];
                    $m['load_rows'] = (int) $pdo->query('SELECT COUNT(*) FROM matomo_archive_claim_load WHERE host NOT LIKE \'bench-host%\'')->fetchColumn();
                    $pdo->exec('DELETE FROM matomo_archive_claim_load');
                    foreach ($servers as $server) {
                        $server->stop();
                    }
                    // Back in the queue for the next scenario (the version before does not give a
                    // process's claims back when it ends), and no registrations left over.
                    $pdo->exec('UPDATE matomo_archive_invalidations SET status = 0, processing_host = NULL, process_id = NULL, ts_started = NULL WHERE status = 1');
                    $pdo->exec('DELETE FROM matomo_archive_claim_process');
                    $results[$version][$size][$hostCount][$indexed ? 1 : 0] = $m;
                    say(sprintf('(measured %s: %s rows, %d hosts, index %s: %.1f ms/s; the table loaded in %.0f s)', $version, number_format($size), $hostCount,
                        $indexed ? 'yes' : 'no', $m['cpu_ms_s'], $loaded));
                }
            }
            TestDatabase::drop($config);
        }
    }
    say();
    $cell = fn (array $m): string => sprintf('%.1f ms/s (%.2f%%)', $m['cpu_ms_s'], $m['cpu_ms_s'] / 10);
    foreach ($results as $version => $bySize) {
        say("Database CPU per wall second (% of one core), $version:");
        say();
        $header = ['table rows'];
        foreach ($hostCounts as $h) {
            $header[] = "$h hosts, no index";
            $header[] = "$h hosts, index";
        }
        $rows = [];
        foreach ($bySize as $size => $byHosts) {
            $row = [number_format($size)];
            foreach ($hostCounts as $h) {
                $row[] = $cell($byHosts[$h][0]);
                $row[] = $cell($byHosts[$h][1]);
            }
            $rows[] = $row;
        }
        table($header, $rows);
        $detail = [];
        foreach ($bySize as $size => $byHosts) {
            foreach ($hostCounts as $h) {
                foreach ([0, 1] as $i) {
                    $m = $byHosts[$h][$i];
                    $detail[] = [number_format($size), $h, $i ? 'yes' : 'no', sprintf('%.1f', $m['qps']), number_format($m['rows_s']), number_format($m['held']),
                        sprintf('%.0f µs', $m['load_upsert_us']), number_format($m['load_rows'])];
                }
            }
        }
        table(['table rows', 'hosts', 'index on status', 'statements/s', 'rows read/s', 'in progress after', 'load history upsert (median)', 'load rows the hosts wrote'], $detail);
        $first = array_key_first($bySize);
        $last = array_key_last($bySize);
        foreach ($hostCounts as $h) {
            foreach ([0, 1] as $i) {
                say(sprintf('%d hosts, %s: %s rows cost %.2fx what %s rows cost.', $h, $i ? 'with the index' : 'no index', number_format($last),
                    $bySize[$last][$h][$i]['cpu_ms_s'] / max(0.01, $bySize[$first][$h][$i]['cpu_ms_s']), number_format($first)));
            }
        }
        say();
    }
    say('From issue 10, measured there (not in this run), before this work: 10 hosts on a 1,000,000-row table cost 423 ms of');
    say('database time per second without the index (23.5% of a core), 18 ms/s with it.');
    if (count($versions) === 1) {
        say('(The version before was not measured in this run: set MATOMO_ARCHIVE_CLAIM_BENCH_BEFORE to its .so, see the README.)');
    }
    say();
}

// What the plugin and the extension cost a real Matomo 5.2's core:archive: wall time and the
// statements the database server received (SHOW GLOBAL STATUS 'Questions'; this server has no
// other client), stock (plugin deactivated, no extension) and with the plugin active and the
// extension loaded from an ini file, alternating, N rounds each, the same invalidations each
// time. Then one run of each with MariaDB's general log on (not timed), to break the extension's
// statements down by purpose and per climulti:request child.
if ($wanted('matomo')) {
    require_once __DIR__ . '/../../tests/support/RealMatomo.php';
    say('## A real Matomo 5.2: one core:archive, stock and with the plugin and the extension');
    say();
    if (\Matomo\ArchiveClaim\Tests\RealMatomo::sharedDir() === null) {
        say('skipped: no real Matomo (../shared/matomo beside the repository)');
        say();
    } else {
        $sites = $quick ? 2 : 3;
        $days = $quick ? 7 : 14;
        $perDay = $quick ? 10 : 30;
        $rounds = $quick ? 2 : (int) (getenv('MATOMO_ARCHIVE_CLAIM_BENCH_ROUNDS') ?: 3);
        $start = '2024-01-01';
        $end = date('Y-m-d', strtotime("$start +" . ($days - 1) . ' days'));
        // The extension's defaults (heartbeat 5 s, lease 60 s, automatic reaping on), as an operator runs it.
        $m = \Matomo\ArchiveClaim\Tests\RealMatomo::install(['SITES' => $sites, 'DAYS' => $days, 'VISITS_PER_DAY' => $perDay, 'START' => $start], []);
        try {
            $m->copyPlugin();
            $m->setConfig('General', 'enable_browser_archiving_triggering', '0');
            $admin = TestDatabase::admin();
            $self = (int) $admin->query('SELECT CONNECTION_ID()')->fetchColumn();
            $questions = fn (): int => (int) $admin->query("SHOW GLOBAL STATUS LIKE 'Questions'")->fetch(PDO::FETCH_NUM)[1];
            $prepare = function (bool $plugin) use ($m, $start, $end): int {
                $m->resetArchives();
                [$code, $out] = $m->console(['plugin:' . ($plugin ? 'activate' : 'deactivate'), 'ArchiveClaim'], $plugin);
                $code === 0 || throw new \RuntimeException($out);
                [$code, $out] = $m->console(['core:invalidate-report-data', "--dates=$start,$end", '--sites=all'], $plugin);
                $code === 0 || throw new \RuntimeException($out);
                return (int) $m->pdo()->query('SELECT COUNT(*) FROM matomo_archive_invalidations')->fetchColumn();
            };
            $archive = function (bool $plugin) use ($m, $questions): array {
                $q0 = $questions();
                $cpu0 = machine_cpu_seconds();
                $t = microtime(true);
                [$code, $out] = $m->console(['core:archive', '--url=http://localhost/'], $plugin);
                $wall = microtime(true) - $t;
                $cpu = machine_cpu_seconds() - $cpu0;
                $q = $questions() - $q0 - 1; // minus the SHOW that read q0
                $code === 0 || throw new \RuntimeException("core:archive exited $code:\n$out");
                return ['wall' => $wall, 'cpu' => $cpu, 'questions' => $q, 'archives' => count(preg_grep('/Archived website id/', explode("\n", $out)))];
            };
            $runs = ['stock' => [], 'plugin' => []];
            $queued = 0;
            for ($i = 0; $i < $rounds; $i++) {
                // Alternate which goes first, so a drift of the machine's load falls on both.
                foreach ($i % 2 ? ['plugin', 'stock'] : ['stock', 'plugin'] as $mode) {
                    $queued = $prepare($mode === 'plugin');
                    $runs[$mode][] = $archive($mode === 'plugin');
                }
            }
            $med = fn (string $mode, string $k) => median(array_column($runs[$mode], $k));
            say(sprintf('%d sites x %d days of %d visits/day, every report invalidated (%d invalidations), one core:archive, %d rounds, '
                . 'load average %s at the end:', $sites, $days, $perDay, $queued, $rounds, explode(' ', (string) file_get_contents('/proc/loadavg'))[0]));
            table(['core:archive', 'median wall', 'walls', 'median CPU (machine)', 'median Questions', 'archives (children)'], [
                ['stock (plugin deactivated, no extension)', fmt_s($med('stock', 'wall')), implode(' ', array_map(fn ($r) => sprintf('%.1f', $r['wall']), $runs['stock'])),
                    fmt_s($med('stock', 'cpu')), number_format($med('stock', 'questions')), $runs['stock'][0]['archives']],
                ['plugin + extension (ini file)', fmt_s($med('plugin', 'wall')), implode(' ', array_map(fn ($r) => sprintf('%.1f', $r['wall']), $runs['plugin'])),
                    fmt_s($med('plugin', 'cpu')), number_format($med('plugin', 'questions')), $runs['plugin'][0]['archives']],
            ]);
            // Each round's two runs ran back to back: their ratio cancels the machine's drift
            // between rounds, which the medians of each side do not.
            $paired = array_map(fn ($p, $s) => $p['wall'] / max(0.001, $s['wall']), $runs['plugin'], $runs['stock']);
            say(sprintf('Ratios, plugin / stock: wall %.3fx (median of the %d rounds\' own ratios: %.3fx, from %.3fx to %.3fx), CPU %.3fx, statements %.3fx (+%s statements, %+.1f per archive).',
                $med('plugin', 'wall') / max(0.001, $med('stock', 'wall')), $rounds, median($paired), min($paired), max($paired),
                $med('plugin', 'cpu') / max(0.001, $med('stock', 'cpu')), $med('plugin', 'questions') / max(1, $med('stock', 'questions')),
                number_format($med('plugin', 'questions') - $med('stock', 'questions')),
                ($med('plugin', 'questions') - $med('stock', 'questions')) / max(1, $runs['plugin'][0]['archives'])));
            say('(CPU: the whole machine\'s busy time during the run from /proc/stat: Matomo\'s processes, the database and anything else running.)');
            say();

            // The breakdown: one more run of each with the general log on (slower; not timed).
            $breakdown = [];
            foreach (['stock', 'plugin'] as $mode) {
                $prepare($mode === 'plugin');
                $admin->exec("SET GLOBAL log_output = 'TABLE'");
                $admin->exec('TRUNCATE mysql.general_log');
                $admin->exec('SET GLOBAL general_log = 1');
                try {
                    $r = $archive($mode === 'plugin');
                } finally {
                    $admin->exec('SET GLOBAL general_log = 0');
                }
                $log = $admin->query("SELECT thread_id, command_type, CONVERT(argument USING utf8mb4) FROM mysql.general_log
                    WHERE command_type IN ('Query', 'Execute') AND thread_id <> $self")->fetchAll(PDO::FETCH_NUM);
                // The extension's connections are the ones that set its lock wait bounds at connect.
                $ours = [];
                foreach ($log as [$thread, , $sql]) {
                    if (stripos($sql, 'innodb_lock_wait_timeout') !== false || stripos($sql, 'archive_claim_process') !== false) {
                        $ours[$thread] = true;
                    }
                }
                $count = ['matomo' => 0, 'ours' => 0];
                $purpose = [];
                $registrations = 0;
                foreach ($log as [$thread, , $sql]) {
                    if (!isset($ours[$thread])) {
                        $count['matomo']++;
                        continue;
                    }
                    $count['ours']++;
                    $s = strtolower(ltrim($sql));
                    $what = match (true) {
                        str_contains($s, 'archive_claim_process') && str_starts_with($s, 'insert') => 'registration (INSERT into the registry)',
                        str_contains($s, 'archive_claim_process') && str_starts_with($s, 'update') && str_contains($s, 'heartbeat_at') => 'heartbeats (UPDATE of the registration)',
                        str_contains($s, 'archive_claim_process') && str_starts_with($s, 'delete') => 'unregistration (DELETE)',
                        str_contains($s, 'archive_claim_process') && str_starts_with($s, 'select') && !str_contains($s, 'information_schema') => 'registry reads (who is registered, watch list, stale hosts)',
                        str_contains($s, 'archive_invalidations') && str_starts_with($s, 'update') && str_contains($s, 'set status = 1') => 'claims (UPDATE ... SET status = 1)',
                        str_contains($s, 'archive_invalidations') && str_starts_with($s, 'delete') => 'completions (fenced DELETE)',
                        str_contains($s, 'archive_invalidations') && str_starts_with($s, 'update') => 'releases (fenced UPDATE)',
                        str_contains($s, 'information_schema') => 'schema checks (registry table, index, column charset)',
                        str_contains($s, 'archive_invalidations') => 'reads of archive_invalidations (reaps)',
                        str_contains($s, 'get_lock') => 'reaper elections (GET_LOCK)',
                        str_starts_with($s, 'set ') || str_starts_with($s, 'select @@') || str_contains($s, ' using ') => 'session setup (per connection: packet size, sql_mode, lock waits, charset, zone)',
                        str_contains($s, 'utc_timestamp') || str_contains($s, 'uptime') => 'database clock and uptime reads',
                        in_array($s, ['commit', 'rollback', 'begin'], true) || str_starts_with($s, 'start transaction') => 'transactions (BEGIN/COMMIT)',
                        default => 'other',
                    };
                    if (str_starts_with($what, 'registration')) {
                        $registrations++;
                    }
                    $purpose[$what] = ($purpose[$what] ?? 0) + 1;
                }
                arsort($purpose);
                $breakdown[$mode] = ['count' => $count, 'purpose' => $purpose, 'registrations' => $registrations, 'archives' => $r['archives'], 'threads' => count($ours)];
            }
            $b = $breakdown['plugin'];
            $children = max(1, $b['registrations'] - 1); // every climulti:request child registers, and so does the parent
            say(sprintf('Statements by connection, from the general log (Query + Execute; one run each): stock: Matomo %s; with the plugin: '
                . 'Matomo %s, the extension %s on %d connections (%d registrations: the core:archive parent and %d climulti:request children, %d archives).',
                number_format($breakdown['stock']['count']['matomo']), number_format($b['count']['matomo']), number_format($b['count']['ours']),
                $b['threads'], $b['registrations'], $children, $b['archives']));
            $rows = [];
            foreach ($b['purpose'] as $what => $n) {
                $rows[] = [$what, number_format($n), sprintf('%.1f', $n / $children)];
            }
            $rows[] = ['all of the extension', number_format($b['count']['ours']), sprintf('%.1f', $b['count']['ours'] / $children)];
            table(['the extension\'s statements, by purpose', 'in the run', 'per child (divided by the children)'], $rows);
            say('(Per child divides the whole run\'s statements, the parent\'s included, by the children: what archiving one request costs in all.)');
            say();
            child_cost($m->database(), $runs['plugin'][0]['archives'], $med('stock', 'wall'), $quick ? 15 : 41);
        } finally {
            $m->remove();
        }
    }
}
