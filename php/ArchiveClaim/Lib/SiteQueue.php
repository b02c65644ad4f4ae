<?php
/**
 * Puts the sites of released invalidations back into Matomo's shared site queue.
 *
 * Why: core:archive (without --force-idsites) takes sites from a queue kept in Matomo's option
 * table (Piwik\CronArchive\SharedSiteIds). A run takes a site off the queue before it archives
 * it, and a run that starts while the queue is not empty continues it ("Continuing ongoing
 * archiving run by pulling from shared idSite queue") instead of building a new one. A killed
 * run's site is therefore in nobody's queue: its released rows, and its queued ones, wait for
 * a run that finds the queue empty and builds a fresh one (with hourly cron, up to an hour
 * more). Appending the site lets the runs at work, or the next one, take it.
 *
 * The rules, so a live run's queue is never disturbed:
 * - only appends, and only sites not queued already: nothing is removed or reordered;
 * - nothing when there is no queue: the next run builds a fresh one, with every site; creating
 *   one would make that run "continue" a queue of just these sites and skip the others;
 * - the queue's reset time is never touched (runs stop when it changes);
 * - under Matomo's own lock, through Matomo's own methods (SharedSiteIds::runExclusive(),
 *   getAllSiteIdsToArchive(), setSiteIdsToArchive()). runExclusive() is private and the
 *   constructor starts or joins a queue, so the object is made without the constructor and the
 *   methods are reached through a closure bound to the class. If a Matomo release renames any
 *   of it, the call fails, the plugin says so once (NOTICE) and archiving goes on as before.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim\Lib;

use Matomo\ArchiveClaim as Native;
use Piwik\CronArchive\SharedSiteIds;
use Piwik\Log\LoggerInterface;

final class SiteQueue
{
    /**
     * The sites of the rows a reap report released (re-queued, or deleted as duplicates of
     * queued work, which is then the site's work to do).
     *
     * @param list<array<string, mixed>> $rows rows of reap_orphans()['rows'] or background_releases()
     * @return list<int>
     */
    public static function releasedSites(array $rows): array
    {
        $sites = [];
        foreach ($rows as $r) {
            if (in_array($r['action'] ?? '', [Native\Action::RESET, Native\Action::DELETED_DUPLICATE], true) && (int) ($r['idsite'] ?? 0) > 0) {
                $sites[(int) $r['idsite']] = true;
            }
        }
        return array_keys($sites);
    }

    /**
     * Appends to Matomo's shared site queue those of $sites it does not hold, if there is a queue.
     * Never throws: failing here must not fail archiving.
     *
     * @param list<int> $sites
     * @return list<int> the sites appended
     */
    public static function requeue(LoggerInterface $logger, array $sites, string $by): array
    {
        if (!$sites) {
            return [];
        }
        try {
            if (!class_exists(SharedSiteIds::class) || !SharedSiteIds::isSupported()) {
                return []; // no shared queue on this system: every run archives all sites
            }
            $queue = (new \ReflectionClass(SharedSiteIds::class))->newInstanceWithoutConstructor();
            $append = \Closure::bind(function (array $sites): array {
                $this->optionName = self::OPTION_ALL_WEBSITES;
                return $this->runExclusive(function () use ($sites): array {
                    $queued = $this->getAllSiteIdsToArchive();
                    if (!$queued) {
                        return [];
                    }
                    $missing = array_values(array_diff($sites, array_map('intval', $queued)));
                    if ($missing) {
                        $this->setSiteIdsToArchive(array_merge($queued, $missing));
                    }
                    return $missing;
                });
            }, $queue, SharedSiteIds::class);
            $added = $append(array_values(array_unique(array_map('intval', $sites))));
        } catch (\Throwable $e) {
            Extension::once($logger, 'ArchiveClaim: cannot put the sites of released invalidations back into Matomo\'s shared site queue ('
                . $e->getMessage() . '); they are archived by the next run that builds a new queue');
            return [];
        }
        if ($added) {
            $logger->info('ArchiveClaim: {by} put site {sites} back into Matomo\'s shared site queue (its invalidations were released)', [
                'by' => $by, 'sites' => implode(', ', $added)]);
        }
        return $added;
    }
}
