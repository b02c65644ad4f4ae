<?php
/**
 * 0.3.0 shows what each heartbeat thread did beside its registration: install() adds the
 * counter columns to a 0.2.0 registry (heartbeats go on without them until then).
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
