<?php
/**
 * A simulated Matomo archiver: takes queued invalidations, claims one, "archives" it for a
 * while and deletes it as done (or, every Nth, fails and gives it back), until the queue is
 * empty and nothing is in progress anywhere. Claims go through the extension (mode "ext"), or
 * through Matomo 5.3's own statements on PDO as a server without the extension would (mode
 * "pdo", StockMatomo). Every start and end goes to a shared log (WorkLog) so
 * overlaps can be checked afterwards.
 *
 * It rides out database restarts: a failed statement is retried on a new connection, and a
 * claim whose outcome is unknown is given back (a fenced release changes nothing if the claim
 * never happened). A completion that finds the row no longer ours is logged as "lost": a live
 * claim was taken away, which must never happen.
 *
 * With IN_CHILD = child, the work runs as Matomo runs it: in a child process whose command line
 * says `climulti:request ... runid=<this pid>`; the child logs the work, and this process
 * completes the row once the child is done (if this process is killed meanwhile, the child
 * finishes anyway and the row must stay in progress until it has).
 *
 * Usage: php [-d extension=...] archiver.php CONFIG_JSON LOG_FILE WORK_MS [ext|pdo] [RELEASE_EVERY] [MAX_WORK_MS] [IN_CHILD]
 */

declare(strict_types=1);

use Matomo\ArchiveClaim as Native;
use Matomo\ArchiveClaim\Tests\StockMatomo;
use Matomo\ArchiveClaim\Tests\WorkLog;

require __DIR__ . '/WorkLog.php';
require __DIR__ . '/StockMatomo.php';

/** The extension's three steps, or stock Matomo's (StockMatomo). */
final class Claimer
{
    private StockMatomo $stock;

    public function __construct(PDO $pdo, string $table, private bool $native)
    {
        $this->stock = new StockMatomo($pdo, $table);
    }

    public function claim(int $id): bool
    {
        return $this->native ? Native\claim_invalidation($id) : $this->stock->claim($id);
    }

    public function complete(int $id): int
    {
        return $this->native ? Native\complete_invalidations([$id]) : $this->stock->complete([$id]);
    }

    public function release(int $id): int
    {
        return $this->native ? Native\release_invalidations([$id]) : $this->stock->release([$id]);
    }
}

[, $configJson, $logFile, $workMs] = $argv;
$mode = $argv[4] ?? 'ext';
$releaseEvery = (int) ($argv[5] ?? 0);
$maxWorkMs = (int) ($argv[6] ?? $workMs);
$inChild = ($argv[7] ?? '') === 'child';
$c = json_decode($configJson, true);
if ($mode === 'ext') {
    Matomo\ArchiveClaim\configure($c);
}
$log = new WorkLog($logFile);
$table = "`{$c['tables_prefix']}archive_invalidations`";

function connect(array $c): PDO
{
    $pdo = new PDO("mysql:host={$c['host']};port={$c['port']};dbname={$c['dbname']}", $c['username'], $c['password'],
        [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_EMULATE_PREPARES => true, PDO::ATTR_TIMEOUT => 5]);
    $pdo->exec("SET sql_mode = 'NO_AUTO_VALUE_ON_ZERO'");
    return $pdo;
}

/** Runs $step until it gets through (the database may be restarting). */
function persist(callable $step, ?PDO &$pdo, array $c)
{
    for ($attempt = 0; ; $attempt++) {
        try {
            $pdo ??= connect($c);
            return $step($pdo);
        } catch (\PDOException | \Matomo\ArchiveClaim\Exception $e) {
            if ($attempt > 600) {
                throw $e;
            }
            $pdo = null;
            usleep(100000);
        }
    }
}

$pdo = null;
$handled = 0;
$claimer = fn (PDO $pdo) => new Claimer($pdo, $table, $mode === 'ext');

while (true) {
    if ($mode === 'ext') {
        $log->reaped(Native\background_releases(), 'background');
    }
    $queued = persist(fn ($pdo) => $pdo->query("SELECT idinvalidation, idsite FROM $table WHERE status = 0
        ORDER BY period, date1, idinvalidation LIMIT 20")->fetchAll(PDO::FETCH_ASSOC), $pdo, $c);
    if (!$queued) {
        if ((int) persist(fn ($pdo) => $pdo->query("SELECT COUNT(*) FROM $table")->fetchColumn(), $pdo, $c) === 0) {
            break; // all done
        }
        usleep(100000); // the rest is in progress somewhere, or waiting to be reaped
        continue;
    }
    shuffle($queued);
    foreach ($queued as $invalidation) {
        $id = (int) $invalidation['idinvalidation'];
        try {
            $pdo ??= connect($c);
            $claimed = $claimer($pdo)->claim($id);
        } catch (\PDOException | \Matomo\ArchiveClaim\Exception $e) {
            if ($mode !== 'ext') {
                throw $e; // stock Matomo's release is not fenced: it would crash here too
            }
            // Did it commit before the connection died? Unknown: give it back, fenced.
            $pdo = null;
            persist(fn ($pdo) => $claimer($pdo)->release($id), $pdo, $c);
            continue;
        }
        if (!$claimed) {
            continue;
        }
        $ms = random_int((int) $workMs, max((int) $workMs, $maxWorkMs));
        if ($inChild) {
            // As CliMulti runs an archive: a separate PHP whose command line names its parent,
            // loading the extension as Matomo's children do (the plugin registers them, so
            // their heartbeats keep their parent's claims alive where its host cannot be seen).
            // It rides out a database restart like its parent; if it fails all the same, it
            // exits non-zero before starting the work, and the parent gives the row back.
            $work = sprintf('for ($try = 0; ; $try++) {
                    try { Matomo\ArchiveClaim\configure(%s); Matomo\ArchiveClaim\register_process(); break; }
                    catch (Matomo\ArchiveClaim\Exception $e) { if ($try > 600) { exit(1); } usleep(100000); }
                }
                require %s; $log = new Matomo\ArchiveClaim\Tests\WorkLog(%s); $log->start(%d); usleep(%d); $log->end(%d, "done");
                $log->reaped(Matomo\ArchiveClaim\background_releases(), "background");',
                var_export($c, true), var_export(__DIR__ . '/WorkLog.php', true), var_export($logFile, true), $id, $ms * 1000, $id);
            $ini = ['-d', 'extension=' . getenv('MATOMO_ARCHIVE_CLAIM_EXT')];
            foreach (['heartbeat_interval', 'lease', 'auto_reap'] as $key) {
                $ini[] = '-d';
                $ini[] = "matomo_archive_claim.$key=" . ini_get("matomo_archive_claim.$key");
            }
            $child = proc_open(array_merge([PHP_BINARY, '-n'], $ini, ['-r', $work, '--', 'climulti:request',
                "module=API&method=CoreAdminHome.archiveReports&idSite={$invalidation['idsite']}&runid=" . getmypid()]), [], $pipes);
            if (proc_close($child) !== 0) {
                // As Matomo treats a failed climulti:request: the claim goes back.
                persist(fn ($pdo) => $claimer($pdo)->release($id), $pdo, $c);
                break;
            }
            $deleted = persist(fn ($pdo) => $claimer($pdo)->complete($id), $pdo, $c);
            if ($deleted === 0 && $mode === 'ext') {
                $log->end($id, 'lost');
            }
            break;
        }
        $log->start($id);
        usleep($ms * 1000);
        if ($releaseEvery > 0 && ++$handled % $releaseEvery === 0) {
            $log->end($id, 'released');
            persist(fn ($pdo) => $claimer($pdo)->release($id), $pdo, $c);
        } else {
            $log->end($id, 'done');
            $deleted = persist(fn ($pdo) => $claimer($pdo)->complete($id), $pdo, $c);
            if ($deleted === 0 && $mode === 'ext') {
                $log->end($id, 'lost');
            }
        }
        break;
    }
}
