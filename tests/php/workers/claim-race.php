<?php
/**
 * One racer: tries to claim every id in [first, last] in its own random order, prints the ids it
 * won as JSON. Usage: php -d extension=... claim-race.php CONFIG_JSON FIRST LAST
 */
declare(strict_types=1);

Matomo\ArchiveClaim\configure(json_decode($argv[1], true));
$ids = range((int) $argv[2], (int) $argv[3]);
shuffle($ids);
$won = [];
foreach ($ids as $id) {
    if (Matomo\ArchiveClaim\claim_invalidation($id)) {
        $won[] = $id;
    }
}
echo json_encode(['pid' => getmypid(), 'won' => $won]);
