<?php
/**
 * ArchiveClaim: hooks Matomo's core:archive so that each run configures the
 * matomo_archive_claim extension from Matomo's own [database] settings, registers the archiving
 * process (heartbeat), and re-queues the invalidations of crashed archivers before archiving
 * starts, with Matomo's archive_failure_recovery_timeout as the backstop. Without the extension,
 * it says so once and Matomo archives as before.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim;

use Matomo\ArchiveClaim as Native;
use Piwik\Config;
use Piwik\Config\GeneralConfig;
use Piwik\Container\StaticContainer;
use Piwik\Log\LoggerInterface;
use Piwik\Plugins\ArchiveClaim\Lib\Extension;


class ArchiveClaim extends \Piwik\Plugin
{
    private static bool $toldMissing = false;

    public function registerEvents()
    {
        return [
            'CronArchive.init.start' => 'onCronArchiveStart',
            'CronArchive.end' => 'onCronArchiveEnd',
        ];
    }

    /** Before Matomo's own timeout-based reset runs: release what is proven orphaned now. */
    public function onCronArchiveStart(): void
    {
        $logger = StaticContainer::get(LoggerInterface::class);
        if (!self::extensionReady($logger)) {
            return;
        }
        try {
            Native\configure(Config::getInstance()->database);
            $me = Native\register_process();
            $report = Native\reap_orphans(self::timeouts());
            foreach ($report['rows'] as $r) {
                if (in_array($r['action'], ['reset', 'deleted_duplicate'], true)) {
                    $logger->info('ArchiveClaim: {action} invalidation {id} (site {idsite}, period {period}, {date1}) '
                        . 'held by {host} pid {pid} for {age} s: {reason}', [
                            'action' => $r['action'] === 'reset' ? 're-queued' : 'deleted duplicate',
                            'id' => $r['idinvalidation'], 'idsite' => $r['idsite'], 'period' => $r['period'],
                            'date1' => $r['date1'], 'host' => $r['processing_host'], 'pid' => $r['process_id'],
                            'age' => $r['age_seconds'], 'reason' => $r['reason'],
                        ]);
                }
            }
            $logger->info('ArchiveClaim: process {pid} on {host} registered; {released} orphaned invalidations released, {kept} in progress kept.', [
                'pid' => $me['pid'], 'host' => $me['host'], 'released' => $report['released'], 'kept' => $report['kept'],
            ]);
        } catch (Native\Exception | \ValueError | \TypeError $e) {
            // Never stop Matomo from archiving: without us it archives as it always did.
            $logger->error('ArchiveClaim: {message} (archiving continues without orphan reaping)', ['message' => $e->getMessage()]);
        }
    }

    public function onCronArchiveEnd(): void
    {
        if (Extension::loaded()) {
            Native\unregister_process();
        }
    }

    /** Matomo's archive_failure_recovery_timeout, with [General_<idsite>] overrides for the sites that have work in progress. */
    public static function timeouts(): array
    {
        $options = ['timeout' => (int) (GeneralConfig::getConfigValue('archive_failure_recovery_timeout') ?: 86400)];
        $siteTimeouts = [];
        foreach (array_unique(array_column(Native\in_progress(), 'idsite')) as $idSite) {
            $value = GeneralConfig::getConfigValue('archive_failure_recovery_timeout', (int) $idSite);
            if ($value !== null && (int) $value > 0 && (int) $value !== $options['timeout']) {
                $siteTimeouts[(int) $idSite] = (int) $value;
            }
        }
        if ($siteTimeouts) {
            $options['site_timeouts'] = $siteTimeouts;
        }
        return $options;
    }

    /** False (said once per process) when the extension is missing. */
    public static function extensionReady(LoggerInterface $logger): bool
    {
        if (Extension::loaded()) {
            return true;
        }
        if (!self::$toldMissing) {
            self::$toldMissing = true;
            $logger->warning(Extension::missingMessage());
        }
        return false;
    }
}
