<?php
/**
 * One racer: tries to claim every id in [first, last] in its own random order, prints the ids it
 * won as JSON on one line, then holds its claims until its stdin closes (a racer that ended would
 * give its claims back at request end, and the others would claim them again).
 * Usage: php -d extension=... claim-race.php CONFIG_JSON FIRST LAST
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
echo json_encode(['pid' => getmypid(), 'won' => $won]), "\n";
fgets(STDIN);
