<?php
/**
 * Claims and releases one row CYCLES times in one PHP process and prints its resident memory
 * every STEP cycles, as JSON lines: a leak in the extension would show as growth.
 *
 * Usage: php -d extension=... cycle-worker.php CONFIG_JSON ID CYCLES STEP
 */

declare(strict_types=1);

function rss_kib(): int
{
    preg_match('/^VmRSS:\s+(\d+)/m', (string) file_get_contents('/proc/self/status'), $m);
    return (int) $m[1];
}

[, $config, $id, $cycles, $step] = $argv;
Matomo\ArchiveClaim\configure(json_decode($config, true));
$id = (int) $id;
echo json_encode(['cycles' => 0, 'rss_kib' => rss_kib()]), "\n";
for ($i = 1; $i <= (int) $cycles; $i++) {
    Matomo\ArchiveClaim\claim_invalidation($id) || throw new RuntimeException("cycle $i: claim failed");
    Matomo\ArchiveClaim\release_invalidations([$id]) === 1 || throw new RuntimeException("cycle $i: release failed");
    if ($i % (int) $step === 0) {
        echo json_encode(['cycles' => $i, 'rss_kib' => rss_kib()]), "\n";
    }
}
