<?php
/**
 * 0.1.0 had no install(): an operator who activated it (on Matomo 5.3, which has the owner
 * columns) gets the process registry and the index now, as a fresh activation would.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim;

use Piwik\Updater;
use Piwik\Updates as PiwikUpdates;

class Updates_0_2_0 extends PiwikUpdates
{
    /**
     * No fixed migration list: what is missing depends on the Matomo version (5.0-5.2 lack the
     * columns) and on [ArchiveClaim] index; install() adds exactly that, idempotently.
     */
    public function doUpdate(Updater $updater)
    {
        (new ArchiveClaim())->install();
    }
}
