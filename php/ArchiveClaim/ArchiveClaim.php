<?php
/**
 * ArchiveClaim: with the matomo_archive_claim extension, every claim core:archive makes records
 * this host and process natively (ClaimingModel, put in place by config/config.php), and the
 * invalidations of crashed archivers go back to the queue on proof of death instead of after
 * archive_failure_recovery_timeout. Without the extension Matomo archives exactly as before.
 *
 * Events:
 * - CronArchive.init.start / CronArchive.end: the archiving run registers (its heartbeat starts)
 *   and unregisters; whatever its heartbeat thread released is logged.
 * - API.CoreAdminHome.archiveReports (+ .end): fires in each `climulti:request` child that
 *   archives for core:archive; the child registers, so the extension knows that the parent's
 *   claim is being worked on even if the parent is gone.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim;

use Matomo\ArchiveClaim as Native;
use Piwik\Config;
use Piwik\Config\GeneralConfig;
use Piwik\Container\StaticContainer;
use Piwik\Log\LoggerInterface;
use Piwik\Plugins\ArchiveClaim\Lib\Extension;
use Piwik\Plugins\ArchiveClaim\Lib\ModelCompatibility;
use Piwik\Plugins\ArchiveClaim\Lib\ReleaseLog;
use Piwik\Plugins\ArchiveClaim\Lib\Schema;
use Piwik\Plugins\ArchiveClaim\Lib\StatusView;

class ArchiveClaim extends \Piwik\Plugin
{
    public function registerEvents()
    {
        return [
            'CronArchive.init.start' => 'onCronArchiveStart',
            'CronArchive.end' => 'onCronArchiveEnd',
            'API.CoreAdminHome.archiveReports' => 'onArchivingRequestStart',
            'API.CoreAdminHome.archiveReports.end' => 'onArchivingRequestEnd',
        ];
    }

    /**
     * Adds what claims need: Matomo 5.3's processing_host/process_id where missing (5.0-5.2),
     * the process registry, and (unless [ArchiveClaim] index = 0) an index on (status,
     * processing_host). Done here, by whoever activates the plugin, so archivers never need
     * CREATE or ALTER privileges.
     */
    public function install()
    {
        $logger = self::logger();
        $index = (bool) (Config::getInstance()->ArchiveClaim['index'] ?? true);
        $changes = null;
        if (Extension::ready($logger)) {
            try {
                $changes = Native\install_schema(['index' => $index])['changes'];
            } catch (Native\Exception $e) {
                $logger->info('ArchiveClaim: install_schema() failed ({message}); installing through Matomo\'s connection', ['message' => $e->getMessage()]);
            }
        }
        $changes ??= Schema::forMatomo()->install($index);
        $logger->info('ArchiveClaim: schema {changes}', ['changes' => $changes ? implode('; ', $changes) : 'already complete']);
    }

    /** Drops the registry and the index; Matomo's own columns stay. */
    public function uninstall()
    {
        $changes = Schema::forMatomo()->uninstall();
        self::logger()->info('ArchiveClaim: uninstalled: {changes}', ['changes' => $changes ? implode('; ', $changes) : 'nothing to drop']);
    }

    /** The archiving run registers before Matomo's own reset (resetFailedArchivingJobs) runs. */
    public function onCronArchiveStart(): void
    {
        $logger = self::logger();
        if (!self::modelIsOurs($logger) || !Extension::ready($logger, true)) {
            return;
        }
        try {
            $me = Native\register_process();
            $logger->info('ArchiveClaim: core:archive pid {pid} on {host} registered; its claims are recorded natively', [
                'pid' => $me['pid'], 'host' => $me['host']]);
            if (!Schema::forMatomo()->statusIsIndexed()) {
                // A NOTICE, not a warning: a warning would make core:archive exit 1.
                Extension::once($logger, 'ArchiveClaim: no index of archive_invalidations starts with status, so automatic reaping '
                    . 'looks for orphans once per lease (' . $me['lease'] . ' s) instead of every heartbeat. Activating the plugin '
                    . 'adds one unless [ArchiveClaim] index = 0; or run Matomo\ArchiveClaim\install_schema().');
            }
        } catch (Native\Exception $e) {
            // Never stop Matomo from archiving: claims fall back to Matomo's statement if the
            // extension cannot reach the database.
            Extension::once($logger, 'ArchiveClaim: cannot register this archiver: ' . $e->getMessage());
        }
    }

    public function onCronArchiveEnd(): void
    {
        if (Extension::loaded() && ModelCompatibility::compatible()) {
            ReleaseLog::background(self::logger());
            Native\unregister_process();
        }
    }

    /**
     * In a `climulti:request` child, before it archives: register, so the extension records that
     * this process works for its parent (runid=<parent pid> on its command line).
     */
    public function onArchivingRequestStart(): void
    {
        if (PHP_SAPI !== 'cli' || !ModelCompatibility::compatible() || !Extension::ready(self::logger())) {
            // Web requests to this API method are not archiving children; and where the plugin
            // stepped aside (see modelIsOurs) its parent claims with Matomo's own statement.
            return;
        }
        try {
            Native\register_process();
        } catch (Native\Exception $e) {
            Extension::once(self::logger(), 'ArchiveClaim: an archiving child cannot register: ' . $e->getMessage());
        }
    }

    public function onArchivingRequestEnd(): void
    {
        if (PHP_SAPI === 'cli' && Extension::loaded() && ModelCompatibility::compatible()) {
            ReleaseLog::background(self::logger());
            Native\unregister_process();
        }
    }

    /** Matomo's archive_failure_recovery_timeout, with [General_<idsite>] overrides for the sites that have work in progress. */
    public static function timeouts(): array
    {
        $options = ['timeout' => (int) (GeneralConfig::getConfigValue('archive_failure_recovery_timeout') ?: 86400)];
        $siteTimeouts = [];
        $sites = [];
        foreach (StatusView::pages() as $r) {
            $sites[(int) $r['idsite']] = true;
        }
        foreach (array_keys($sites) as $idSite) {
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

    /**
     * Whether core:archive got ClaimingModel (config/config.php hands it out only when this
     * Matomo's Model is the one it was written for). If not, the plugin steps aside as a whole:
     * no registration, no heartbeat, Matomo's own claims; and says why, once per run, as a
     * NOTICE (a warning would make core:archive exit 1, and archiving is fine).
     */
    private static function modelIsOurs(LoggerInterface $logger): bool
    {
        $problems = ModelCompatibility::problems();
        if ($problems) {
            Extension::once($logger, ModelCompatibility::message($problems));
        }
        return $problems === [];
    }

    private static function logger(): LoggerInterface
    {
        return StaticContainer::get(LoggerInterface::class);
    }
}
