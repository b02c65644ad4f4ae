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
        $this->addNoValueOption('json', null, 'Print JSON: counts per host and every row.');
        $this->setHelp("Verdicts: dead (proven: pid gone or reused on its host, or heartbeats older than the lease),\n"
            . "alive (heartbeat fresh, or its process runs), unknown (claimed without the extension on another host).\n"
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
        $rows = StatusView::all($filters);
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
