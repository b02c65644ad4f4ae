<?php
/**
 * ./console archiveclaim:status: every in-progress invalidation with its host, pid, age and
 * liveness verdict, grouped by host.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim\Commands;

use Matomo\ArchiveClaim as Native;
use Piwik\Config;
use Piwik\Plugin\ConsoleCommand;
use Piwik\Plugins\ArchiveClaim\Lib\Extension;
use Piwik\Plugins\ArchiveClaim\Lib\Fleet;
use Piwik\Plugins\ArchiveClaim\Lib\ReapRequest;
use Piwik\Plugins\ArchiveClaim\Lib\StatusView;

class Status extends ConsoleCommand
{
    protected function configure()
    {
        $this->setName('archiveclaim:status');
        $this->setDescription('Shows every invalidation in progress: host, pid, age and whether its owner is alive.');
        $this->addRequiredValueOption('processing-host', null, 'Only rows of this host (repeatable).', null, true);
        $this->addRequiredValueOption('idsite', null, 'Only rows of these sites (repeatable, or comma separated).', null, true);
        $this->addNoValueOption('long-running', null, 'Only long-running rows: older than [ArchiveClaim] long_running_factor x the usual duration of their kind (and long_running_min_seconds).');
        $this->addNoValueOption('json', null, 'Print JSON: counts per host and every row.');
        $this->setHelp("Verdicts: dead (proven: pid gone or reused on its host, or heartbeats older than the lease),\n"
            . "alive (heartbeat fresh, or its process runs), unknown (claimed without the extension on another host).\n"
            . "LONG-RUNNING marks a row older than long_running_factor (3) x the 95th percentile of recent archives of its\n"
            . "period and site (else period) and over long_running_min_seconds (300), both in [ArchiveClaim] of config.ini.php.\n"
            . 'Exit code 3 when some rows are dead (archiveclaim:reap releases them).');
    }

    protected function doExecute(): int
    {
        if (!Extension::loaded()) {
            $this->getOutput()->writeln('<error>' . Extension::missingMessage() . '</error>');
            return self::FAILURE;
        }
        Native\configure(Config::getInstance()->database);
        $filters = [];
        $hosts = (array) $this->getInput()->getOption('processing-host');
        if ($hosts) {
            $filters['hosts'] = array_values($hosts);
        }
        $sites = (array) $this->getInput()->getOption('idsite');
        if ($sites) {
            $filters['idsites'] = ReapRequest::idsites($sites);
        }
        $rows = Fleet::rows($filters);
        if ($this->getInput()->getOption('long-running')) {
            $rows = array_values(array_filter($rows, fn ($r) => !empty($r['long_running'])));
        }
        if ($this->getInput()->getOption('json')) {
            $this->getOutput()->writeln(StatusView::json($rows));
        } else {
            foreach (StatusView::lines($rows) as $line) {
                $this->getOutput()->writeln($line);
            }
        }
        return StatusView::deadCount($rows) > 0 ? ReapRequest::WOULD_RELEASE : self::SUCCESS;
    }
}
