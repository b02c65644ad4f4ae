<?php
/**
 * A log of who worked on which invalidation when, written by many processes at once (one short
 * line per write with O_APPEND, so lines never interleave), and the check that matters: no
 * invalidation was worked on by two live processes at the same time.
 */

declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

final class WorkLog
{
    private string $who;

    public function __construct(private string $file)
    {
        $host = gethostname() ?: '-';
        $this->who = $host . ' ' . getmypid();
    }

    public function start(int $id): void
    {
        $this->write('start', $id);
    }

    /** $how: done (completed), released (given back), or lost (the row was no longer ours). */
    public function end(int $id, string $how): void
    {
        $this->write($how, $id);
    }

    /**
     * Rows a reaper released (reap_orphans() report entries, or background_releases()), so a
     * violation can be traced to the release that caused it: whose row, by whom, and why.
     * Not work: analyse() skips these lines.
     *
     * @param array<int, array<string, mixed>> $entries
     */
    public function reaped(array $entries, string $how): void
    {
        $lines = '';
        foreach ($entries as $e) {
            if (!in_array($e['action'] ?? '', ['reset', 'deleted_duplicate'], true)) {
                continue;
            }
            $lines .= sprintf("%.6f reaped %d %s %s %s %s %s/%s/%s age=%s started=%s\n", microtime(true), $e['idinvalidation'],
                $this->who, $how, $e['processing_host'] ?? '-', $e['process_id'] ?? '-', $e['verdict'], $e['reason'],
                $e['action'], $e['age_seconds'] ?? '-', str_replace(' ', 'T', (string) ($e['ts_started'] ?? '-')));
        }
        if ($lines !== '') {
            file_put_contents($this->file, $lines, FILE_APPEND);
        }
    }

    private function write(string $what, int $id): void
    {
        file_put_contents($this->file, sprintf("%.6f %s %d %s\n", microtime(true), $what, $id, $this->who), FILE_APPEND);
    }

    /**
     * Records that "host pid" (or a whole "host") was dead by $at. A process dies once: a later
     * kill of what is left of it (a zombie nobody collected) must not stretch its work to then.
     *
     * @param array<string, float> $deaths
     */
    public static function died(array &$deaths, string $who, float $at): void
    {
        $deaths[$who] ??= $at;
    }

    /**
     * @param array<string, float> $deaths "host pid" or "host" => when it was killed; work it
     *   never finished ended then
     * @return array{done: int[], overlaps: string[], unfinished: string[], lost: int[], seen: int[]}
     */
    public static function analyse(string $file, array $deaths = []): array
    {
        $open = [];
        $spans = [];
        $done = [];
        $lost = [];
        $seen = [];
        foreach (file($file, FILE_IGNORE_NEW_LINES) ?: [] as $line) {
            [$t, $what, $id, $host, $pid] = explode(' ', $line);
            if ($what === 'reaped') {
                continue;
            }
            $key = "$host $pid $id";
            $seen[(int) $id] = true;
            if ($what === 'lost') {
                $lost[] = (int) $id;
                continue;
            }
            if ($what === 'start') {
                $open[$key] = (float) $t;
                continue;
            }
            $spans[(int) $id][] = [$open[$key] ?? 0.0, (float) $t, "$host $pid"];
            unset($open[$key]);
            if ($what === 'done') {
                $done[(int) $id] = true;
            }
        }
        $unfinished = [];
        foreach ($open as $key => $start) {
            [$host, $pid, $id] = explode(' ', $key);
            $diedAt = $deaths["$host $pid"] ?? $deaths[$host] ?? null;
            if ($diedAt === null) {
                $unfinished[] = $key;
                continue;
            }
            $spans[(int) $id][] = [$start, $diedAt, "$host $pid"];
        }
        $overlaps = [];
        foreach ($spans as $id => $list) {
            usort($list, fn ($a, $b) => $a[0] <=> $b[0]);
            for ($i = 1; $i < count($list); $i++) {
                if ($list[$i][0] < $list[$i - 1][1]) {
                    $overlaps[] = sprintf('#%d: %s [%.3f..%.3f] and %s [%.3f..%.3f]', $id, $list[$i - 1][2],
                        $list[$i - 1][0], $list[$i - 1][1], $list[$i][2], $list[$i][0], $list[$i][1]);
                }
            }
        }
        $done = array_keys($done);
        sort($done);
        $seen = array_keys($seen);
        sort($seen);
        return ['done' => $done, 'overlaps' => $overlaps, 'unfinished' => $unfinished, 'lost' => $lost, 'seen' => $seen];
    }
}
