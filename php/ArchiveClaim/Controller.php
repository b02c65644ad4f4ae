<?php
/**
 * Administration → System → Archiving fleet: the operator's view of the archivers, read-only.
 * Everything it shows comes from Lib\Fleet (the same source as archiveclaim:status).
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim;

use Piwik\Piwik;
use Piwik\Plugins\ArchiveClaim\Lib\Fleet;

class Controller extends \Piwik\Plugin\ControllerAdmin
{
    public function index()
    {
        Piwik::checkUserHasSuperUserAccess();
        try {
            $fleet = Fleet::forMatomo()->snapshot();
            $failure = null;
        } catch (\Throwable $e) {
            // The page says what went wrong instead of Matomo's error page (e.g. a database
            // that refuses information_schema).
            $fleet = null;
            $failure = $e->getMessage();
        }
        return $this->renderTemplate('index', [
            'fleet' => $fleet,
            'failure' => $failure,
            'matomoPath' => PIWIK_INCLUDE_PATH,
        ]);
    }
}
