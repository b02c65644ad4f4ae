<?php
/**
 * A simulated Matomo archiver: takes queued invalidations, claims one through the extension,
 * "archives" it for a while and deletes it as done, until the queue is empty and nothing is in
 * progress anywhere. Every start and finish goes to a shared log, one line per event, so the
 * demo can prove afterwards that no invalidation was worked on by two live processes at once.
 *
 * Usage: php -d extension=... archiver.php CONFIG_JSON LOG_FILE WORK_MS
 */

declare(strict_types=1);

use Matomo\ArchiveClaim as AC;

[, $configJson, $log, $workMs] = $argv;
$c = json_decode($configJson, true);
AC\configure($c);
$pdo = new PDO("mysql:host={$c['host']};port={$c['port']};dbname={$c['dbname']}", $c['username'], $c['password'],
    [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
$table = "`{$c['tables_prefix']}archive_invalidations`";
$me = AC\identity();

function event(string $log, string $what, int $id, array $me): void
{
    // One short line per write with O_APPEND: lines from many processes never interleave.
    file_put_contents($log, sprintf("%.6f %s %d %s %d\n", microtime(true), $what, $id, $me['host'], $me['pid']), FILE_APPEND);
}

while (true) {
    $queued = $pdo->query("SELECT idinvalidation FROM $table WHERE status = 0 ORDER BY period, date1, idinvalidation LIMIT 20")
        ->fetchAll(PDO::FETCH_COLUMN);
    if (!$queued) {
        if ((int) $pdo->query("SELECT COUNT(*) FROM $table")->fetchColumn() === 0) {
            break; // all done
        }
        usleep(100000); // the rest is in progress somewhere, or waiting to be reaped
        continue;
    }
    shuffle($queued);
    foreach ($queued as $id) {
        if (AC\claim_invalidation((int) $id)) {
            event($log, 'start', (int) $id, $me);
            usleep((int) $workMs * 1000);
            event($log, 'finish', (int) $id, $me);
            AC\complete_invalidations([(int) $id]);
            break;
        }
    }
}
