<?php
/**
 * The fleet for monitoring systems (Grafana, Zabbix, a cron mail): what the Archiving fleet page
 * shows, through Matomo's HTTP API, so token_auth, every output format (json, xml, csv, tsv,
 * html, ...) and Matomo's generic filters come from Matomo. Super users only, like the page.
 * Each method returns a flat table (one row per claim, per host and point in time, per
 * release), so every format carries all of it. The numbers come from Lib\Fleet and
 * Lib\History, the page's own source.
 *
 * @method static \Piwik\Plugins\ArchiveClaim\API getInstance()
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim;

use Piwik\DataTable;
use Piwik\Piwik;
use Piwik\Plugins\ArchiveClaim\Lib\Fleet;
use Piwik\Plugins\ArchiveClaim\Lib\History;
use Piwik\Plugins\ArchiveClaim\Lib\ReleaseLog;
use Piwik\Plugins\ArchiveClaim\Lib\StatusView;

class API extends \Piwik\Plugin\API
{
    /**
     * Who does what now: one row per invalidation in progress (host, pid, whether the owner is
     * registered and its heartbeat's age, site, period, dates, age, verdict and reason, the
     * usual duration of its kind and whether it is long-running), and one per registered
     * process that holds nothing (kind = idle_process).
     *
     * @return DataTable
     */
    public function getFleet()
    {
        Piwik::checkUserHasSuperUserAccess();
        $snapshot = Fleet::forMatomo()->snapshot();
        if ($snapshot['extension']['state'] !== 'ok') {
            throw new \Exception($snapshot['extension']['message']);
        }
        return DataTable::makeFromSimpleArray(Fleet::flatFleet($snapshot));
    }

    /**
     * The load per host over the last 24 hours (one row per host and minute) or 7 days (per 15
     * minutes): invalidations claimed, finished and released, the most in progress at once,
     * and how many processes worked. With shares=1: one row per host with its totals in the
     * window and its share of what was finished and claimed, in percent (the page's table).
     *
     * @param string $window 24h or 7d
     * @param string $host only this host (empty: all)
     * @param int $shares 1: per-host totals and shares instead of the points
     * @return DataTable
     */
    public function getHostLoad($window = '24h', $host = '', $shares = 0)
    {
        Piwik::checkUserHasSuperUserAccess();
        if (!isset(History::WINDOWS[$window])) {
            throw new \Exception('window must be one of ' . implode(', ', array_keys(History::WINDOWS)));
        }
        $load = History::forMatomo()->load($window, $host === '' ? null : (string) $host);
        if ($shares) {
            $rows = [];
            foreach (History::shares($load['points']) as $name => $s) {
                $rows[] = ['host' => (string) $name] + $s;
            }
            return DataTable::makeFromSimpleArray($rows);
        }
        return DataTable::makeFromSimpleArray($load['points']);
    }

    /**
     * What was released lately (by core:archive runs, heartbeat threads and archiveclaim:reap),
     * newest first: when, which invalidation, whose it was, the verdict and reason, what was
     * done and by whom.
     *
     * @return DataTable
     */
    public function getReleases()
    {
        Piwik::checkUserHasSuperUserAccess();
        $rows = [];
        foreach (ReleaseLog::recent() as $r) {
            $rows[] = ['at' => (int) $r['at'], 'datetime' => gmdate('Y-m-d H:i:s', (int) $r['at']),
                'idinvalidation' => (int) ($r['idinvalidation'] ?? 0), 'idsite' => isset($r['idsite']) ? (int) $r['idsite'] : null,
                'period' => StatusView::period((int) ($r['period'] ?? 0)), 'date1' => $r['date1'] ?? null, 'date2' => $r['date2'] ?? null,
                'processing_host' => $r['processing_host'] ?? null, 'process_id' => $r['process_id'] ?? null,
                'verdict' => $r['verdict'] ?? null, 'reason' => $r['reason'] ?? null, 'action' => $r['action'] ?? null, 'by' => $r['by'] ?? null];
        }
        return DataTable::makeFromSimpleArray($rows);
    }
}
