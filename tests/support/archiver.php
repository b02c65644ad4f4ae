<?php
/**
 * A simulated Matomo archiver: takes queued invalidations, claims one, "archives" it for a
 * while and deletes it as done (or, every Nth, fails and gives it back), until the queue is
 * empty and nothing is in progress anywhere. Claims go through the plugin's
 * InvalidationClaimer: with the extension (mode "ext"), or with Matomo's own statements through
 * PDO as a server without the extension would (mode "pdo"). Every start and end goes to a
 * shared log (WorkLog) so overlaps can be checked afterwards.
 *
 * Usage: php [-d extension=...] archiver.php CONFIG_JSON LOG_FILE WORK_MS [ext|pdo] [RELEASE_EVERY]
 */

declare(strict_types=1);

use Matomo\ArchiveClaim\Tests\WorkLog;
use Piwik\Plugins\ArchiveClaim\Lib\InvalidationClaimer;

require __DIR__ . '/WorkLog.php';
require __DIR__ . '/../../php/ArchiveClaim/Lib/Extension.php';
require __DIR__ . '/../../php/ArchiveClaim/Lib/InvalidationClaimer.php';

[, $configJson, $logFile, $workMs] = $argv;
$mode = $argv[4] ?? 'ext';
$releaseEvery = (int) ($argv[5] ?? 0);
$c = json_decode($configJson, true);
$pdo = new PDO("mysql:host={$c['host']};port={$c['port']};dbname={$c['dbname']}", $c['username'], $c['password'],
    [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_EMULATE_PREPARES => true]);
$pdo->exec("SET sql_mode = 'NO_AUTO_VALUE_ON_ZERO'");
if ($mode === 'ext') {
    Matomo\ArchiveClaim\configure($c);
}
$claimer = InvalidationClaimer::forPdo($pdo, $c['tables_prefix'], $mode === 'ext');
$log = new WorkLog($logFile);
$table = "`{$c['tables_prefix']}archive_invalidations`";
$handled = 0;

while (true) {
    $queued = $pdo->query("SELECT idinvalidation, idsite FROM $table WHERE status = 0 ORDER BY period, date1, idinvalidation LIMIT 20")
        ->fetchAll(PDO::FETCH_ASSOC);
    if (!$queued) {
        if ((int) $pdo->query("SELECT COUNT(*) FROM $table")->fetchColumn() === 0) {
            break; // all done
        }
        usleep(100000); // the rest is in progress somewhere, or waiting to be reaped
        continue;
    }
    shuffle($queued);
    foreach ($queued as $invalidation) {
        if ($claimer->claim($invalidation)) {
            $id = (int) $invalidation['idinvalidation'];
            $log->start($id);
            usleep((int) $workMs * 1000);
            if ($releaseEvery > 0 && ++$handled % $releaseEvery === 0) {
                $log->end($id, 'released');
                $claimer->release([$id]);
            } else {
                $log->end($id, 'done');
                $claimer->complete([$id]);
            }
            break;
        }
    }
}
