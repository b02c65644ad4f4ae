<?php
/**
 * Spring forward, for real: run on a MariaDB whose clock libfaketime starts shortly before the
 * Europe/Berlin DST change (with-mariadb.sh, MATOMO_ARCHIVE_CLAIM_TEST_DB_FAKETIME, TZ), with
 * time_zone = SYSTEM. An archiver on one simulated server claims a row and heartbeats through
 * the change (its local time jumps from 01:59:59 to 03:00:00); a reaper on another server reaps
 * every 250 ms until the database's clock is past the change. Then the archiver loses power and
 * the reaper must release its row through the lease, as on any other night.
 *
 * Prints one JSON line: {"crossed": [local before, local after], "seen": [...], "after_death": entry}.
 * Usage: php -d extension=... dst-scenario.php   (inside tests/support/with-mariadb.sh)
 */

declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

require __DIR__ . '/TestDatabase.php';
require __DIR__ . '/SimulatedServer.php';

$config = TestDatabase::create('matomo_');
$pdo = TestDatabase::matomoPdo($config);
[$id] = TestDatabase::queue($pdo, 'matomo_', [[]]);
$clock = fn () => $pdo->query('SELECT NOW(), UTC_TIMESTAMP() >= \'2026-03-29 01:00:05\'')->fetch(\PDO::FETCH_NUM);

$archiver = SimulatedServer::start('dst-archiver', $config);
$reaper = SimulatedServer::start('dst-reaper', $config);
// A reaper proves a silence only by watching it: registered, its heartbeat thread watches.
$reaper->send(['cmd' => 'register']);
$won = $archiver->send(['cmd' => 'claim', 'ids' => [$id]])['won'];
[$before] = $clock();
$seen = [];
$deadline = microtime(true) + 60;
do {
    $entry = array_column($reaper->send(['cmd' => 'reap'])['rows'], null, 'idinvalidation')[$id] ?? null;
    $seen[] = $entry === null ? 'gone' : "{$entry['verdict']}/{$entry['reason']}/{$entry['action']}";
    usleep(250000);
    [$now, $past] = $clock();
} while (!$past && microtime(true) < $deadline);

$archiver->killWhole();
$deadline = microtime(true) + 15;
do {
    usleep(250000);
    $after = array_column($reaper->send(['cmd' => 'reap'])['rows'], null, 'idinvalidation')[$id] ?? null;
} while ($after !== null && $after['action'] === 'kept' && microtime(true) < $deadline);
$reaper->stop();

echo json_encode(['won' => $won, 'crossed' => [$before, $now], 'seen' => array_values(array_unique($seen)),
    'after_death' => $after === null ? null : [$after['verdict'], $after['reason'], $after['action']]]), "\n";
