<?php
/**
 * 0.3.0 shows what each heartbeat thread did beside its registration, and widens the plugin's
 * index on archive_invalidations from (status, processing_host) to one that covers what a reap
 * reads (Schema::OWNER_INDEX_COLUMNS). install() adds the counter columns and the lease each
 * process keeps to a 0.2.0 registry (heartbeats go on without them until then; without the lease
 * every process is judged by the reaper's) and replaces the index in one ALTER where
 * [ArchiveClaim] index is on.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim;

use Piwik\Updater;
use Piwik\Updates as PiwikUpdates;

class Updates_0_3_0 extends PiwikUpdates
{
    public function doUpdate(Updater $updater)
    {
        (new ArchiveClaim())->install();
    }
}
