<?php
/**
 * Administration → System → Archiving fleet: the operator's view of the archivers, read-only.
 * Everything it shows comes from Lib\Fleet (the same source as archiveclaim:status, the System
 * Check and the API). index() is the page; live() is its changing part alone, which the page
 * fetches every few seconds and swaps in (templates/_live.twig, rendered by both, so the first
 * view and every refresh are the same HTML).
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim;

use Piwik\Common;
use Piwik\Piwik;
use Piwik\Plugins\ArchiveClaim\Lib\Fleet;
use Piwik\Plugins\ArchiveClaim\Lib\History;
use Piwik\View;

class Controller extends \Piwik\Plugin\ControllerAdmin
{
    /** Seconds between the page's refreshes. */
    public const REFRESH_SECONDS = 5;

    public function index()
    {
        Piwik::checkUserHasSuperUserAccess();
        return $this->renderTemplate('index', $this->live_variables() + [
            'matomoPath' => PIWIK_INCLUDE_PATH,
            'refreshSeconds' => self::REFRESH_SECONDS,
            'windows' => array_keys(History::WINDOWS),
        ]);
    }

    /** The page's live part alone (HTML), for the page's own refresh. */
    public function live()
    {
        Piwik::checkUserHasSuperUserAccess();
        $view = new View('@ArchiveClaim/_live');
        foreach ($this->live_variables() as $name => $value) {
            $view->$name = $value;
        }
        return $view->render();
    }

    private function live_variables(): array
    {
        $window = Common::getRequestVar('window', '24h', 'string');
        $window = isset(History::WINDOWS[$window]) ? $window : '24h';
        try {
            $fleet = Fleet::forMatomo()->snapshot($window);
            $failure = null;
        } catch (\Throwable $e) {
            // The page says what went wrong instead of Matomo's error page (e.g. a database
            // that refuses information_schema).
            $fleet = null;
            $failure = $e->getMessage();
        }
        return ['fleet' => $fleet, 'failure' => $failure, 'window' => $window, 'renderedAt' => microtime(true)];
    }
}
