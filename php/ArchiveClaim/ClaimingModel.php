<?php
/**
 * Matomo's archive Model, with the archiver's claims going through the matomo_archive_claim
 * extension (config/config.php puts it into the DI container in place of Matomo's Model).
 *
 * - startArchive() claims natively: the row records this host and pid, and this process is
 *   registered, so its claims can be proven alive or dead later.
 * - Releases and completions of rows this object claimed are fenced on the owner: a process
 *   whose row was taken away never undoes somebody else's newer claim.
 * - Rows this object did not claim (queued duplicates Matomo deletes, rows claimed by Matomo's
 *   own statement) get exactly Matomo's treatment: parent::.
 * - resetFailedArchivingJobs() releases proven orphans now, and, as Matomo does, anything older
 *   than archive_failure_recovery_timeout; their sites go back into Matomo's shared site queue.
 *
 * Without the extension, or when it cannot be configured, every method is Matomo's own, so
 * archiving never depends on us.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim;

use Matomo\ArchiveClaim as Native;
use Piwik\Common;
use Piwik\Config\GeneralConfig;
use Piwik\Container\StaticContainer;
use Piwik\DataAccess\Model;
use Piwik\Date;
use Piwik\Db;
use Piwik\Log\LoggerInterface;
use Piwik\Plugins\ArchiveClaim\Lib\Extension;
use Piwik\Plugins\ArchiveClaim\Lib\History;
use Piwik\Plugins\ArchiveClaim\Lib\ReleaseLog;
use Piwik\Plugins\ArchiveClaim\Lib\SiteQueue;

class ClaimingModel extends Model
{
    /** @var array<int, true> ids this object claimed through the extension and has not finished */
    private array $ours = [];

    /** @var array<int, array{0: float, 1: int, 2: int}> claim time, idsite, period of our claims, for History::recordDurations */
    private array $started = [];

    private LoggerInterface $log;

    public function __construct(?LoggerInterface $logger = null)
    {
        parent::__construct($logger);
        $this->log = $logger ?: StaticContainer::get(LoggerInterface::class);
    }

    public function startArchive($invalidation)
    {
        if (!Extension::ready($this->log)) {
            return parent::startArchive($invalidation);
        }
        $id = (int) $invalidation['idinvalidation'];
        try {
            $claimed = Native\claim_invalidation($id) || $this->takeOver($invalidation);
        } catch (Native\Exception $e) {
            // The extension's own connection failed. Whether its claim committed is unknown;
            // if it did, the row stays ours until this process ends and is then reaped. Let
            // Matomo try with its connection rather than stop archiving.
            Extension::once($this->log, 'ArchiveClaim: claiming through the extension failed (' . $e->getMessage()
                . '); this run claims with Matomo\'s own statement when that happens');
            return parent::startArchive($invalidation);
        } finally {
            ReleaseLog::background($this->log);
        }
        if ($claimed) {
            $this->ours[$id] = true;
            $this->started[$id] = [microtime(true), (int) $invalidation['idsite'], (int) $invalidation['period']];
        }
        return $claimed;
    }

    /**
     * Matomo's take-over: when the row, as the caller fetched it, was started longer ago than
     * archive_failure_recovery_timeout, Matomo assumes its archiver failed, claims it over the
     * top and deletes older duplicates. Ours decides on the row as it is now: the site's rows
     * past the timeout (or proven orphaned) are released through the fenced reap, then claimed
     * natively, so a row someone claimed a moment ago is never taken from a live process.
     */
    private function takeOver(array $invalidation): bool
    {
        $idSite = (int) $invalidation['idsite'];
        $timeout = (int) GeneralConfig::getConfigValue('archive_failure_recovery_timeout', $idSite);
        if (
            empty($invalidation['ts_started'])
            || Date::factory($invalidation['ts_started'])->getTimestamp() > Date::now()->subSeconds($timeout)->getTimestamp()
        ) {
            return false; // someone else is on it, within the time Matomo gives them
        }
        $report = Native\reap_orphans(['idsites' => [$idSite], 'timeout' => $timeout]);
        // (No SiteQueue::requeue() here: the site is the one this run is archiving right now.)
        ReleaseLog::rows($this->log, $report['rows'], 'the take-over of invalidation ' . $invalidation['idinvalidation'] . ' by pid ' . getmypid());
        if (!Native\claim_invalidation((int) $invalidation['idinvalidation'])) {
            return false;
        }
        // As Matomo: older invalidations of the same archive are covered by this one. Only
        // queued ones: any still in progress survived the reap, so their owners are alive.
        $bind = [$invalidation['idinvalidation'], $idSite, $invalidation['date1'], $invalidation['date2'],
            $invalidation['period'], $invalidation['name']];
        $reportClause = "(report IS NULL OR report = '')";
        if (!empty($invalidation['report'])) {
            $reportClause = 'report = ?';
            $bind[] = $invalidation['report'];
        }
        Db::query('DELETE FROM `' . Common::prefixTable('archive_invalidations') . '` WHERE idinvalidation < ? AND idsite = ?
            AND date1 = ? AND date2 = ? AND `period` = ? AND `name` = ? AND status = 0 AND ' . $reportClause, $bind);
        return true;
    }

    /** Matomo 5.0-5.2: a failed archiving request gives its invalidation back. */
    public function releaseInProgressInvalidation($idinvalidation)
    {
        [$others] = $this->releaseOurs([$idinvalidation]);
        if ($others) {
            parent::releaseInProgressInvalidation($idinvalidation);
        }
    }

    /** Matomo 5.3+ (not in 5.2, where nothing calls it). */
    public function releaseInProgressInvalidations($idinvalidations)
    {
        [$others, $changed] = $this->releaseOurs((array) $idinvalidations);
        if (!$others) {
            return $changed;
        }
        if (method_exists(Model::class, 'releaseInProgressInvalidations')) {
            return $changed + (int) parent::releaseInProgressInvalidations($others);
        }
        foreach ($others as $id) {
            parent::releaseInProgressInvalidation($id);
        }
        return $changed + count($others);
    }

    /**
     * Finished or skipped invalidations. Ours are completed fenced; the rest (Matomo also
     * deletes queued duplicates it will not archive) are deleted as Matomo deletes them.
     */
    public function deleteInvalidations($archiveInvalidations)
    {
        $ours = $others = [];
        foreach ($archiveInvalidations as $invalidation) {
            $id = (int) $invalidation['idinvalidation'];
            if (isset($this->ours[$id])) {
                $ours[] = $id;
            } else {
                $others[] = $invalidation;
            }
        }
        if ($ours) {
            $finished = array_intersect_key($this->started, array_flip($ours));
            $this->forget($ours);
            if (Extension::ready($this->log)) {
                $deleted = Native\complete_invalidations($ours);
                // How long each took, for "long-running" on the fleet page (one INSERT for the batch).
                History::recordDurations($this->log, $finished);
                if ($deleted < count($ours)) {
                    $this->log->info('ArchiveClaim: {n} of invalidations {ids} finished by pid {pid} were no longer its claims '
                        . '(released meanwhile and taken by another archiver); left to their new owner', [
                            'n' => count($ours) - $deleted, 'ids' => implode(',', $ours), 'pid' => getmypid()]);
                }
            } else {
                // The extension became unusable after claiming: Matomo's own delete.
                parent::deleteInvalidations(array_map(fn ($id) => ['idinvalidation' => $id], $ours));
            }
            ReleaseLog::background($this->log);
        }
        if ($others) {
            parent::deleteInvalidations($others);
        }
    }

    /** At the start of each core:archive run: proven orphans now, the rest after Matomo's timeout. */
    public function resetFailedArchivingJobs()
    {
        if (!Extension::ready($this->log)) {
            return parent::resetFailedArchivingJobs();
        }
        ReleaseLog::background($this->log);
        $report = Native\reap_orphans(ArchiveClaim::timeouts());
        $by = 'core:archive pid ' . getmypid();
        ReleaseLog::rows($this->log, $report['rows'], $by);
        // Matomo builds or joins its shared site queue before it calls this: a killed run's site
        // is not in a queue this run continues, so it would skip what was just released.
        SiteQueue::requeue($this->log, SiteQueue::releasedSites($report['rows']), $by);
        return $report['released'];
    }

    /**
     * Releases the ids this object claimed (fenced).
     *
     * @param array<int|string> $ids
     * @return array{0: list<int>, 1: int} the ids left to Matomo's own release, and how many rows ours changed
     */
    private function releaseOurs(array $ids): array
    {
        $ours = $others = [];
        foreach (array_map('intval', $ids) as $id) {
            if (isset($this->ours[$id])) {
                $ours[] = $id;
            } else {
                $others[] = $id;
            }
        }
        if (!$ours) {
            return [$others, 0];
        }
        $this->forget($ours);
        if (!Extension::ready($this->log)) {
            return [array_merge($others, $ours), 0]; // Matomo's own release, then
        }
        $changed = Native\release_invalidations($ours);
        $this->log->info('ArchiveClaim: pid {pid} gave back invalidations {ids} after a failed archiving request ({changed} released)', [
            'pid' => getmypid(), 'ids' => implode(',', $ours), 'changed' => $changed]);
        return [$others, $changed];
    }

    /** @param list<int> $ids */
    private function forget(array $ids): void
    {
        foreach ($ids as $id) {
            unset($this->ours[$id], $this->started[$id]);
        }
    }
}
