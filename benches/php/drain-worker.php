<?php
/**
 * One of P processes draining the queue as Matomo's archivers do: look for queued rows (from a
 * random place, so P processes do not all fight over the same first rows), claim them one by
 * one. Writes the ids it won to OUT_FILE, one per line.
 *
 * Usage: php -d extension=... drain-worker.php CONFIG_JSON OUT_FILE
 */

declare(strict_types=1);

$c = json_decode($argv[1], true);
Matomo\ArchiveClaim\configure($c);
$pdo = new PDO("mysql:host={$c['host']};port={$c['port']};dbname={$c['dbname']}", $c['username'], $c['password'],
    [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
$table = "`{$c['tables_prefix']}archive_invalidations`";
[$min, $max] = $pdo->query("SELECT MIN(idinvalidation), MAX(idinvalidation) FROM $table")->fetch(PDO::FETCH_NUM);
$next = $pdo->prepare("SELECT idinvalidation FROM $table WHERE status = 0 AND idinvalidation >= ? ORDER BY idinvalidation LIMIT 50");
$won = [];
while (true) {
    $next->execute([random_int((int) $min, (int) $max)]);
    $ids = $next->fetchAll(PDO::FETCH_COLUMN);
    if (!$ids) {
        $next->execute([0]);
        $ids = $next->fetchAll(PDO::FETCH_COLUMN);
        if (!$ids) {
            break;
        }
    }
    foreach ($ids as $id) {
        if (Matomo\ArchiveClaim\claim_invalidation((int) $id)) {
            $won[] = $id;
        }
    }
}
file_put_contents($argv[2], implode("\n", $won));
// Leave holding the claims, as before request-end release existed: a normal end would give
// them back, and the drainers still running would claim them again.
posix_kill(getmypid(), SIGKILL);
