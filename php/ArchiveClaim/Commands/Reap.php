<?php
/**
 * ./console archiveclaim:reap: core:reset-invalidations that only releases proven orphans
 * (and rows past archive_failure_recovery_timeout) unless --force is given.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim\Commands;

use Matomo\ArchiveClaim as Native;
use Piwik\Config;
use Piwik\Container\StaticContainer;
use Piwik\Log\LoggerInterface;
use Piwik\Plugin\ConsoleCommand;
use Piwik\Plugins\ArchiveClaim\ArchiveClaim;
use Piwik\Plugins\ArchiveClaim\Lib\Extension;
use Piwik\Plugins\ArchiveClaim\Lib\ReapRequest;
use Piwik\Plugins\ArchiveClaim\Lib\ReleaseLog;
use Piwik\Plugins\ArchiveClaim\Lib\SiteQueue;

class Reap extends ConsoleCommand
{
    protected function configure()
    {
        $this->setName('archiveclaim:reap');
        $this->setDescription('Releases in-progress invalidations whose archiver is proven dead (core:reset-invalidations, safely).');
        $this->addRequiredValueOption('processing-host', null, 'Only rows of this host (repeatable). With --force: release them all.', null, true);
        $this->addRequiredValueOption('idsite', null, 'Only rows of these sites (repeatable, or comma separated).', null, true);
        $this->addRequiredValueOption('older-than', null, 'Only rows started before this time (strtotime: "1 hour ago"; a date without a zone is UTC).');
        $this->addRequiredValueOption('newer-than', null, 'Only rows started after this time (strtotime; a date without a zone is UTC).');
        $this->addNoValueOption('dry-run', null, 'Show what would be released; change nothing (exit code 3 if anything would be).');
        $this->addNoValueOption('force', null, 'Release every matching row, alive or not (as core:reset-invalidations does).');
        $this->setHelp("Without --force, a row is released only when its owner is proven dead (its pid is gone or reused\n"
            . "on its host, or its heartbeats are older than the lease) or it is older than archive_failure_recovery_timeout.\n"
            . "Example, server2 lost power and you do not want to wait for its lease:\n"
            . '  ./console archiveclaim:reap --processing-host=server2 --force');
    }

    protected function doExecute(): int
    {
        if (!Extension::loaded()) {
            $this->getOutput()->writeln('<error>' . Extension::missingMessage() . '</error>');
            return self::FAILURE;
        }
        $in = $this->getInput();
        Native\configure(Config::getInstance()->database);
        $timeouts = ArchiveClaim::timeouts();
        try {
            $request = new ReapRequest(
                hosts: array_values((array) $in->getOption('processing-host')),
                idsites: ReapRequest::idsites((array) $in->getOption('idsite')),
                olderThan: $in->getOption('older-than') ?: null,
                newerThan: $in->getOption('newer-than') ?: null,
                dryRun: (bool) $in->getOption('dry-run'),
                force: (bool) $in->getOption('force'),
                timeout: $timeouts['timeout'],
                siteTimeouts: $timeouts['site_timeouts'] ?? [],
            );
            [$code, $lines] = $request->run();
        } catch (\InvalidArgumentException | \ValueError $e) {
            $this->getOutput()->writeln('<error>' . $e->getMessage() . '</error>');
            return ReapRequest::USAGE;
        }
        $by = 'archiveclaim:reap pid ' . getmypid();
        ReleaseLog::remember($request->reportRows, $by);
        // As after a run's own reset: a running or the next core:archive takes the sites.
        $added = SiteQueue::requeue(StaticContainer::get(LoggerInterface::class), $request->releasedSites, $by);
        if ($added) {
            $lines[] = 'Put site ' . implode(', ', $added) . " back into Matomo's shared site queue.";
        }
        foreach ($lines as $line) {
            $this->getOutput()->writeln($line);
        }
        return $code;
    }
}
