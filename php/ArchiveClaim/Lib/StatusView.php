<?php
/**
 * The operator's view of in-progress invalidations: grouped by host with counts, one line per
 * row (site, period, dates, name, host, pid, age, verdict, reason), or the same as JSON.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim\Lib;

use Matomo\ArchiveClaim as Native;

final class StatusView
{
    private const PERIODS = [1 => 'day', 2 => 'week', 3 => 'month', 4 => 'year', 5 => 'range'];

    /**
     * Every in-progress row matching $filters, oldest claim first, a page at a time: each page
     * is one bounded in_progress() call, so the extension never holds more than a page.
     *
     * @return \Generator<int, array<string, mixed>>
     */
    public static function pages(array $filters = [], int $pageSize = 10000): \Generator
    {
        $after = null;
        do {
            $page = Native\in_progress($filters + ['limit' => $pageSize] + ($after === null ? [] : ['after' => $after]));
            yield from $page;
            $after = $page === [] ? null : $page[array_key_last($page)];
        } while (count($page) === $pageSize);
    }

    /** @return list<array<string, mixed>> every matching row (in PHP's memory, under memory_limit) */
    public static function all(array $filters = []): array
    {
        return iterator_to_array(self::pages($filters), false);
    }

    /** @param list<array<string, mixed>> $rows from Matomo\ArchiveClaim\in_progress() */
    public static function byHost(array $rows): array
    {
        $hosts = [];
        foreach ($rows as $r) {
            $host = $r['processing_host'] ?? '(unknown host)';
            $hosts[$host] ??= ['in_progress' => 0, Native\Verdict::DEAD => 0, Native\Verdict::ALIVE => 0, Native\Verdict::UNKNOWN => 0, 'long_running' => 0];
            $hosts[$host]['in_progress']++;
            $hosts[$host][$r['verdict']]++;
            $hosts[$host]['long_running'] += empty($r['long_running']) ? 0 : 1;
        }
        ksort($hosts);
        return $hosts;
    }

    public static function deadCount(array $rows): int
    {
        return count(array_filter($rows, fn ($r) => $r['verdict'] === Native\Verdict::DEAD));
    }

    /** @return string[] */
    public static function lines(array $rows): array
    {
        if ($rows === []) {
            return ['No invalidation is in progress.'];
        }
        $lines = [];
        foreach (self::byHost($rows) as $host => $c) {
            $lines[] = sprintf('%s: %d in progress (%d alive, %d dead, %d unknown%s)',
                $host, $c['in_progress'], $c['alive'], $c['dead'], $c['unknown'],
                empty($c['long_running']) ? '' : ", {$c['long_running']} long-running");
            foreach ($rows as $r) {
                if (($r['processing_host'] ?? '(unknown host)') !== $host) {
                    continue;
                }
                $lines[] = sprintf('  #%-8d site %-5d %-5s %s..%s  %-24s pid %-8s %9s  %-7s %s%s',
                    $r['idinvalidation'], $r['idsite'], self::period((int) $r['period']),
                    $r['date1'], $r['date2'], self::shorten($r['name'] . ($r['report'] ? " ({$r['report']})" : ''), 24),
                    $r['process_id'] ?? '-', self::age((int) $r['age_seconds']), $r['verdict'], $r['reason'],
                    empty($r['long_running']) ? '' : '  LONG-RUNNING (usually ' . self::age((int) ceil($r['usual_seconds'])) . ')');
            }
        }
        return $lines;
    }

    public static function json(array $rows): string
    {
        return json_encode(['hosts' => self::byHost($rows), 'rows' => $rows],
            JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR);
    }

    public static function period(int $period): string
    {
        return self::PERIODS[$period] ?? (string) $period;
    }

    public static function age(int $seconds): string
    {
        return match (true) {
            $seconds < 120 => "{$seconds}s",
            $seconds < 7200 => intdiv($seconds, 60) . 'm',
            $seconds < 172800 => intdiv($seconds, 3600) . 'h',
            default => intdiv($seconds, 86400) . 'd',
        };
    }

    private static function shorten(string $s, int $max): string
    {
        return strlen($s) <= $max ? $s : substr($s, 0, $max - 3) . '...';
    }
}
