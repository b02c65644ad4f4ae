<?php
/**
 * 0.4.0 judges silence by watching: every beat bumps a heartbeat version that reapers compare
 * (no database clock enters a verdict), and a release writes a fence on the registration it rests
 * on, so that a heartbeat landing meanwhile on any cluster node aborts it. install() adds both
 * columns to a 0.3.0 registry (a process of this version also adds them when it registers).
 *
 * It also keeps a history for the operator's page and API: the load per host and minute (written
 * by the archivers' heartbeat threads) and how long each finished archive took (written by
 * core:archive at each completion, for "long-running"). install() creates both tables; until
 * then heartbeat threads create the load table themselves and durations are not recorded.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim;

use Piwik\Updater;
use Piwik\Updates as PiwikUpdates;

class Updates_0_4_0 extends PiwikUpdates
{
    public function doUpdate(Updater $updater)
    {
        (new ArchiveClaim())->install();
    }
}
