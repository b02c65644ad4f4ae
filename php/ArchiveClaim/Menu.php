<?php

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim;

use Piwik\Menu\MenuAdmin;
use Piwik\Piwik;

class Menu extends \Piwik\Plugin\Menu
{
    public function configureAdminMenu(MenuAdmin $menu)
    {
        if (Piwik::hasUserSuperUserAccess()) {
            $menu->addSystemItem('ArchiveClaim_MenuTitle', $this->urlForAction('index'), 45);
        }
    }
}
