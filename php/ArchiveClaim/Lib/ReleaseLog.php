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
