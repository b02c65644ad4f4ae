<?php
/**
 * Puts what was released into Matomo's log: which invalidation, whose it was, why, and who
 * released it (this process, or its heartbeat thread, which reaps on its own and cannot log),
 * and puts the sites of what the heartbeat thread released back into Matomo's site queue.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim\Lib;

use Matomo\ArchiveClaim as Native;
use Piwik\Log\LoggerInterface;

final class ReleaseLog
{
    private const RELEASED = [Native\Action::RESET => 're-queued', Native\Action::DELETED_DUPLICATE => 'deleted (a duplicate of queued work)'];

    /**
     * Logs each released row of a reap report (rows kept or lost to a race are not news).
     *
     * @param list<array<string, mixed>> $rows rows of reap_orphans()['rows'] or background_releases()
     * @return int how many were released
     */
    public static function rows(LoggerInterface $logger, array $rows, string $by): int
    {
        self::remember($rows, $by);
        $released = 0;
        foreach ($rows as $r) {
            if (!isset(self::RELEASED[$r['action'] ?? ''])) {
                continue;
            }
            $released++;
            $logger->info('ArchiveClaim: {by} {action} invalidation {id} (site {idsite}, period {period}, {date1}..{date2}) '
                . 'held by {host} pid {pid} for {age} s: {verdict}, {reason}', [
                    'by' => $by, 'action' => self::RELEASED[$r['action']], 'id' => $r['idinvalidation'],
                    'idsite' => $r['idsite'], 'period' => $r['period'], 'date1' => $r['date1'], 'date2' => $r['date2'],
                    'host' => $r['processing_host'] ?? '-', 'pid' => $r['process_id'] ?? '-',
                    'age' => $r['age_seconds'] ?? '?', 'verdict' => $r['verdict'] ?? '?', 'reason' => $r['reason'] ?? '?',
                ]);
        }
        return $released;
    }

    /** Matomo option holding the latest releases for the plugin's page. */
    public const RECENT_OPTION = 'ArchiveClaim_recentReleases';

    /** How many releases the page can show (the oldest go first). */
    public const RECENT_KEPT = 100;

    /**
     * Keeps the released rows of a report in Matomo's option table, newest first, for the
     * operator's page: Matomo's log is a file on the host that released them, the page may run
     * on another. Serialised by a database lock so that two runs releasing at once both count.
     * Never fails the caller: only the page's list is lost.
     *
     * @param list<array<string, mixed>> $rows
     */
    public static function remember(array $rows, string $by): void
    {
        $new = [];
        $now = time();
        foreach ($rows as $r) {
            if (!isset(self::RELEASED[$r['action'] ?? ''])) {
                continue;
            }
            $new[] = ['at' => $now, 'by' => $by, 'action' => $r['action']] + array_intersect_key($r, array_flip([
                'idinvalidation', 'idsite', 'period', 'date1', 'date2', 'name', 'report', 'processing_host',
                'process_id', 'age_seconds', 'verdict', 'reason']));
        }
        if (!$new || !class_exists(\Piwik\Option::class)) {
            return;
        }
        $lock = 'ArchiveClaim.recentReleases';
        try {
            if (!\Piwik\Db::getDbLock($lock, 5)) {
                return;
            }
            try {
                $kept = self::recent();
                \Piwik\Option::set(self::RECENT_OPTION, json_encode(array_slice(array_merge(array_reverse($new), $kept), 0, self::RECENT_KEPT),
                    JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES));
            } finally {
                \Piwik\Db::releaseDbLock($lock);
            }
        } catch (\Throwable $e) {
            // The release happened; only its line on the page is missing.
        }
    }

    /** @return list<array<string, mixed>> the releases remembered, newest first */
    public static function recent(): array
    {
        \Piwik\Option::clearCachedOption(self::RECENT_OPTION);
        $kept = json_decode((string) \Piwik\Option::get(self::RECENT_OPTION), true);
        return is_array($kept) ? $kept : [];
    }

    /** What this process's heartbeat thread released, onto the page's list only (no logger at hand). */
    public static function rememberBackground(): void
    {
        if (!function_exists('Matomo\ArchiveClaim\background_releases')) {
            return;
        }
        try {
            self::remember(\Matomo\ArchiveClaim\background_releases(), 'the heartbeat thread of pid ' . getmypid());
        } catch (\Matomo\ArchiveClaim\Exception $e) {
        }
    }

    /**
     * What this process's heartbeat thread released since the last call, into the log. The
     * extension provides background_releases() from its next version on; before that there is
     * nothing to fetch.
     */
    public static function background(LoggerInterface $logger): void
    {
        if (!function_exists('Matomo\ArchiveClaim\background_releases')) {
            return;
        }
        try {
            $rows = \Matomo\ArchiveClaim\background_releases();
        } catch (\Matomo\ArchiveClaim\Exception $e) {
            return; // only a log line is lost; the release itself happened (or not) in the thread
        }
        $by = 'the heartbeat thread of pid ' . getmypid();
        self::rows($logger, $rows, $by);
        // The thread released them while this process (a core:archive run, or one of its
        // climulti:request children) went on: their sites go where the runs at work take sites.
        SiteQueue::requeue($logger, SiteQueue::releasedSites($rows), $by);
    }
}
