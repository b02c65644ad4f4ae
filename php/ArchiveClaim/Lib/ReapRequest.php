<?php
/**
 * A reap as an operator asks for it, with the options of Matomo's core:reset-invalidations
 * (--processing-host, --idsite, --older-than, --newer-than, --dry-run) plus --force. Without
 * --force only proven orphans (and rows past the recovery timeout) are released; with it, every
 * matching row of the named hosts (or of every matching host), as core:reset-invalidations does.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim\Lib;

use Matomo\ArchiveClaim as Native;

final class ReapRequest
{
    /** Exit codes an operator can script on. */
    public const OK = 0;
    public const ERROR = 1;
    public const USAGE = 2;
    /** A dry run found something it would release. */
    public const WOULD_RELEASE = 3;

    /**
     * @param string[] $hosts
     * @param int[] $idsites
     * @param array<int, int> $siteTimeouts
     */
    public function __construct(
        public array $hosts = [],
        public array $idsites = [],
        public ?string $olderThan = null,
        public ?string $newerThan = null,
        public bool $dryRun = false,
        public bool $force = false,
        public int $timeout = 86400,
        public array $siteTimeouts = [],
    ) {
    }

    /**
     * A strtotime() phrase ("1 hour ago", "2026-11-29 03:00", read as UTC unless it names a zone)
     * as the instant it means, in Unix seconds. ts_started is a local time of the database, in
     * whatever zone it runs: the extension turns the instant into that local time there.
     */
    public static function time(string $value, string $option): int
    {
        $t = strtotime($value . (preg_match('/UTC|GMT|[+-]\d\d:?\d\d$/', $value) ? '' : ' UTC'));
        if ($t === false) {
            throw new \InvalidArgumentException("Invalid value for --$option: '$value' (try \"1 hour ago\" or \"2026-11-29 03:00:00\")");
        }
        return $t;
    }

    /** @return int[] from "--idsite=1 --idsite=3,4" */
    public static function idsites(array $values): array
    {
        $ids = [];
        foreach ($values as $v) {
            foreach (explode(',', (string) $v) as $part) {
                $part = trim($part);
                if (!ctype_digit($part) || (int) $part < 1) {
                    throw new \InvalidArgumentException("Invalid value for --idsite: '$part' (site ids are positive integers)");
                }
                $ids[] = (int) $part;
            }
        }
        return array_values(array_unique($ids));
    }

    public function options(): array
    {
        $options = ['dry_run' => $this->dryRun, 'timeout' => $this->timeout, 'site_timeouts' => $this->siteTimeouts];
        if ($this->idsites) {
            $options['idsites'] = $this->idsites;
        }
        if ($this->hosts) {
            $options['only_hosts'] = $this->hosts;
        }
        if ($this->olderThan !== null) {
            $options['started_before'] = self::time($this->olderThan, 'older-than');
        }
        if ($this->newerThan !== null) {
            $options['started_after'] = self::time($this->newerThan, 'newer-than');
        }
        if ($this->force) {
            $options['force'] = true;
            $options['declare_hosts_dead'] = $this->hosts ?: $this->matchingHosts($options);
        }
        return $options;
    }

    /** Hosts that hold matching in-progress rows (what --force without --processing-host means). */
    private function matchingHosts(array $options): array
    {
        $filters = array_filter([
            'idsites' => $options['idsites'] ?? null,
            'started_before' => $options['started_before'] ?? null,
            'started_after' => $options['started_after'] ?? null,
        ]);
        $hosts = [];
        foreach (StatusView::pages($filters) as $r) {
            if ($r['processing_host'] !== null && $r['processing_host'] !== '') {
                $hosts[$r['processing_host']] = true;
            }
        }
        return array_keys($hosts);
    }

    /** @var list<int> after run(): the sites of the rows it released (for SiteQueue::requeue()) */
    public array $releasedSites = [];

    /** @var list<array<string, mixed>> the report's rows of the last run() (the plugin remembers the released ones) */
    public array $reportRows = [];

    /** @return array{0: int, 1: string[]} exit code and output lines */
    public function run(): array
    {
        $report = Native\reap_orphans($this->options());
        $this->releasedSites = SiteQueue::releasedSites($report['rows']);
        $this->reportRows = $report['rows'];
        $lines = [];
        foreach ($report['rows'] as $r) {
            if ($r['action'] === Native\Action::KEPT && !$this->dryRun) {
                continue;
            }
            $lines[] = sprintf('#%d site %d %s..%s %s pid %s (%s, %s): %s', $r['idinvalidation'], $r['idsite'],
                $r['date1'], $r['date2'], $r['processing_host'] ?? '-', $r['process_id'] ?? '-',
                $r['verdict'], $r['reason'], str_replace('_', ' ', $r['action']));
        }
        if ($this->dryRun) {
            $would = $report['would_reset'] + $report['would_delete'];
            $lines[] = sprintf('Dry run: %d of %d in-progress invalidations would be released (%d re-queued, %d deleted as duplicates); nothing was changed.',
                $would, $report['examined'], $report['would_reset'], $report['would_delete']);
            return [$would > 0 ? self::WOULD_RELEASE : self::OK, $lines];
        }
        $lines[] = sprintf('%d of %d in-progress invalidations released (%d re-queued, %d deleted as duplicates); %d kept%s.',
            $report['released'], $report['examined'], $report['reset'], $report['deleted_duplicate'], $report['kept'],
            $report['lost_race'] ? ", {$report['lost_race']} re-claimed by someone else meanwhile" : '');
        return [self::OK, $lines];
    }
}
