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
// --only=claim,reap,... runs some sections: claim, drain, reap, release, recovery, overheads, background.
$only = null;
foreach ($argv as $arg) {
    if (str_starts_with($arg, '--only=')) {
        $only = explode(',', substr($arg, 7));
    }
}
const SECTIONS = ['claim', 'drain', 'reap', 'release', 'recovery', 'overheads', 'background'];
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
 * A new database whose Matomo invalidations table holds $size queued rows, and how far apart
 * (in ids) the 10,000 rows to put in progress are: the table of the reap and background sections.
 *
 * @return array{0: array<string, string>, 1: PDO, 2: int} config, connection, every
 */
function invalidations_table(int $size): array
{
    $config = TestDatabase::create(PREFIX);
    $pdo = TestDatabase::matomoPdo($config);
    TestDatabase::queueMany($pdo, PREFIX, 1000);
    while (($have = (int) $pdo->query('SELECT COUNT(*) FROM matomo_archive_invalidations')->fetchColumn()) < $size) {
        $pdo->exec('INSERT INTO matomo_archive_invalidations (idarchive, name, idsite, date1, date2, period, ts_invalidated, status)
            SELECT idarchive, name, idsite, date1 - INTERVAL ' . ($have / 50) . ' DAY, date2 - INTERVAL ' . ($have / 50) . ' DAY, period, ts_invalidated, 0
              FROM matomo_archive_invalidations LIMIT ' . min($have, $size - $have));
    }
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
    $matomo = new StockMatomo($pdo, '`' . PREFIX . 'archive_invalidations`');
    $out = [];
    foreach ($quick ? [10000] : [20000, 100000] as $n) {
        $pdo->exec('TRUNCATE matomo_archive_invalidations');
        $ids = TestDatabase::queueMany($pdo, PREFIX, $n);
        $holdAll($ids);
        [$ours, $changed] = timed(fn () => Claim\release_invalidations($ids));
        $holdAll($ids);
        [$theirs, $theirChanged] = timed(fn () => $matomo->release($ids));
        $out[] = ['release_invalidations()', number_format($n), sprintf('%s (%s)', fmt_s($ours), number_format($changed)),
            sprintf('%s (%s)', fmt_s($theirs), number_format($theirChanged)), sprintf('%.3fx', $ours / $theirs)];
    }
    $n = $quick ? 30000 : 150000;
    $pdo->exec('TRUNCATE matomo_archive_invalidations');
    $ids = TestDatabase::queueMany($pdo, PREFIX, $n);
    $holdAll($ids);
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
    // lease, so every host's periodic look falls in the window once whatever its phase.
    $hostCount = $quick ? 4 : 10;
    $ini = ['heartbeat_interval' => $quick ? 2 : 5, 'lease' => $quick ? 10 : 60, 'auto_reap' => 1];
    $window = (float) $ini['lease'];
    $sizes = $quick ? [100000] : [100000, 1000000];
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
    say("## 6. Background load: $hostCount hosts with automatic reaping (heartbeat {$ini['heartbeat_interval']} s, lease {$ini['lease']} s), 10,000 rows in progress");
    say();
    say("Each host a simulated server" . ($isolated ? ' (own host name and pid namespace)' : ' (NOT isolated: no root, so they share one host name)')
        . ' with one registered process holding ' . number_format(10000 / $hostCount) . ' rows in progress; its heartbeat thread beats and reaps.');
    say(sprintf('Measured over %.0f s (one lease) after a warm-up of %d s: the database server\'s CPU time (utime + stime of mariadbd', $window, $ini['heartbeat_interval'] + 2));
    say('in /proc) per wall second, statements received (Questions) and rows read (Rows_read) per second.');
    say();
    $out = [];
    $idle = $measure();
    $out[] = ['nobody connected (the idle server)', '', '', sprintf('%.1f ms/s', $idle['cpu_ms_s']), sprintf('%.2f%%', $idle['cpu_ms_s'] / 10),
        sprintf('%.1f', $idle['qps']), number_format($idle['rows_s']), ''];
    foreach ($sizes as $size) {
        foreach ($versions as $version => $so) {
            [$config, $pdo, $every] = invalidations_table($size);
            $schema($so, $config, ['index' => false]);
            $ids = array_map('intval', $pdo->query("SELECT idinvalidation FROM matomo_archive_invalidations WHERE idinvalidation % $every = 0")->fetchAll(PDO::FETCH_COLUMN));
            foreach ([false, true] as $indexed) {
                if ($indexed) {
                    $schema($so, $config, ['index' => true]);
                }
                $hasIndex = (bool) $pdo->query("SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()
                    AND TABLE_NAME = 'matomo_archive_invalidations' AND COLUMN_NAME = 'status' AND SEQ_IN_INDEX = 1")->fetchColumn();
                $hasIndex === $indexed || throw new \RuntimeException('the index on status is ' . ($hasIndex ? 'there' : 'missing'));
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
                $held = (int) $pdo->query('SELECT COUNT(*) FROM matomo_archive_invalidations WHERE status = 1')->fetchColumn();
                foreach ($servers as $server) {
                    $server->stop();
                }
                // Back in the queue for the next scenario (the version before does not give a
                // process's claims back when it ends).
                $pdo->exec('UPDATE matomo_archive_invalidations SET status = 0, processing_host = NULL, process_id = NULL, ts_started = NULL WHERE status = 1');
                $out[] = [$version, number_format($size), $indexed ? 'yes' : 'no', sprintf('%.1f ms/s', $m['cpu_ms_s']), sprintf('%.2f%%', $m['cpu_ms_s'] / 10),
                    sprintf('%.1f', $m['qps']), number_format($m['rows_s']), number_format($held)];
            }
            TestDatabase::drop($config);
        }
    }
    table(['version', 'table rows', 'index on status', 'database CPU', '% of one core', 'queries/s', 'rows read/s', 'in progress after'], $out);
    say('From issue 10, measured there (not in this run), before this version: 10 hosts on a 1,000,000-row table cost 423 ms of');
    say('database time per second without the index (23.5% of a core), 18 ms/s with it.');
    if (count($versions) === 1) {
        say('(The version before was not measured in this run: set MATOMO_ARCHIVE_CLAIM_BENCH_BEFORE to its .so, see the README.)');
    }
    say();
}
