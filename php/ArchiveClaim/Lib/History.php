<?php
/**
 * The fleet's past: the load per host over a window (what the heartbeat threads wrote to
 * <prefix>archive_claim_load, see src/load.rs), each host's share of the work in it, and how
 * long archives of a kind usually take (what core:archive wrote to <prefix>archive_claim_duration
 * at each completion), which decides when a claim is "long-running".
 *
 * Read through a query closure like Fleet, so the page, the API, the console and the System
 * Check read the same numbers.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim\Lib;

use Piwik\Log\LoggerInterface;

final class History
{
    /** The windows the page and getHostLoad offer: seconds shown, and the width of one point. */
    public const WINDOWS = ['24h' => [86400, 60], '7d' => [604800, 900]];

    /** A baseline needs this many finished archives of the kind; fewer say little. */
    public const MIN_SAMPLES = 5;
    /** The newest this many durations of a kind make its baseline. */
    public const SAMPLES = 100;
    /** Defaults of [ArchiveClaim] long_running_factor and long_running_min_seconds. */
    public const DEFAULT_FACTOR = 3.0;
    public const DEFAULT_MIN_SECONDS = 300;

    /**
     * @param \Closure(string, array): list<array<string, mixed>> $fetchAll runs a query with bound values
     */
    public function __construct(private \Closure $fetchAll, private string $prefix)
    {
    }

    public static function forMatomo(): self
    {
        return new self(fn (string $sql, array $bind = []): array => \Piwik\Db::fetchAll($sql, $bind),
            (string) \Piwik\Config::getInstance()->database['tables_prefix']);
    }

    /**
     * The long-running threshold: a claim is long-running when its age passes both factor x the
     * usual duration (95th percentile) of its kind and min_seconds (so a kind that usually takes
     * a second does not raise an alarm after four).
     *
     * @return array{factor: float, min_seconds: int}
     */
    public static function threshold(): array
    {
        $section = \Piwik\Config::getInstance()->ArchiveClaim;
        $factor = (float) ($section['long_running_factor'] ?? self::DEFAULT_FACTOR);
        $min = (int) ($section['long_running_min_seconds'] ?? self::DEFAULT_MIN_SECONDS);
        return ['factor' => $factor > 1 ? $factor : self::DEFAULT_FACTOR, 'min_seconds' => max(0, $min)];
    }

    /**
     * Writes how long each finished claim took, in one statement. Never stops archiving: a
     * missing table (the plugin not updated yet) or any failure is one NOTICE.
     *
     * @param array<int, array{0: float, 1: int, 2: int}> $finished idinvalidation => [claimed at, idsite, period]
     */
    public static function recordDurations(LoggerInterface $logger, array $finished): void
    {
        if (!$finished) {
            return;
        }
        $now = microtime(true);
        $host = gethostname() ?: null;
        $values = $bind = [];
        foreach ($finished as [$at, $idSite, $period]) {
            $values[] = '(?, ?, ?, ?, ?)';
            array_push($bind, $idSite, $period, $now, max(0.0, $now - $at), $host);
        }
        try {
            \Piwik\Db::query('INSERT INTO `' . \Piwik\Common::prefixTable(Schema::DURATION) . '` (idsite, period, finished_at, seconds, host) VALUES '
                . implode(', ', $values), $bind);
        } catch (\Throwable $e) {
            Extension::once($logger, 'ArchiveClaim: cannot record archive durations (' . $e->getMessage()
                . '); run ./console core:update or activate the plugin again');
        }
    }

    /**
     * Marks each in-progress row: usual_seconds (95th percentile of the newest durations of the
     * same period and site, else of the same period on any site), usual_basis (site, period or
     * null), long_running.
     *
     * @param list<array<string, mixed>> $rows from in_progress()
     * @return list<array<string, mixed>>
     */
    public function markLongRunning(array $rows, ?array $threshold = null): array
    {
        $threshold ??= self::threshold();
        $usual = [];
        foreach ($rows as &$r) {
            $key = (int) $r['period'] . '/' . (int) $r['idsite'];
            $usual[$key] ??= $this->usual((int) $r['period'], (int) $r['idsite']);
            [$seconds, $basis] = $usual[$key];
            $r['usual_seconds'] = $seconds;
            $r['usual_basis'] = $basis;
            $r['long_running'] = $seconds !== null
                && $r['age_seconds'] > max($threshold['factor'] * $seconds, $threshold['min_seconds']);
        }
        return $rows;
    }

    /** @return array{0: ?float, 1: ?string} the 95th percentile, and whether from the site's history or the period's */
    private function usual(int $period, int $idSite): array
    {
        if (!$this->exists(Schema::DURATION)) {
            return [null, null];
        }
        $table = $this->table(Schema::DURATION);
        $site = array_map(fn ($r) => (float) $r['seconds'], ($this->fetchAll)("SELECT seconds FROM `$table`
            WHERE period = ? AND idsite = ? ORDER BY finished_at DESC LIMIT " . self::SAMPLES, [$period, $idSite]));
        if (count($site) >= self::MIN_SAMPLES) {
            return [self::percentile($site, 0.95), 'site'];
        }
        $any = array_map(fn ($r) => (float) $r['seconds'], ($this->fetchAll)("SELECT seconds FROM `$table`
            WHERE period = ? ORDER BY finished_at DESC LIMIT " . self::SAMPLES, [$period]));
        return count($any) >= self::MIN_SAMPLES ? [self::percentile($any, 0.95), 'period'] : [null, null];
    }

    /** @param list<float> $values */
    public static function percentile(array $values, float $p): float
    {
        sort($values);
        return $values[max(0, (int) ceil($p * count($values)) - 1)];
    }

    /**
     * The load per host and point in time over a window ending now (database clock): each
     * point sums claimed, finished and released over its width; in_progress is the most held
     * at once within it.
     *
     * @return array{window: string, from: int, to: int, step: int, points: list<array<string, mixed>>}
     */
    public function load(string $window = '24h', ?string $host = null): array
    {
        [$span, $step] = self::WINDOWS[$window] ?? throw new \InvalidArgumentException("window must be one of "
            . implode(', ', array_keys(self::WINDOWS)) . ", got '$window'");
        $now = (int) current(($this->fetchAll)('SELECT UNIX_TIMESTAMP() AS now', [])[0]);
        $to = $now - $now % $step + $step;
        $from = $to - $span;
        $points = [];
        if ($this->exists(Schema::LOAD)) {
            $table = $this->table(Schema::LOAD);
            $bind = [$step, $step, $from];
            $where = '';
            if ($host !== null && $host !== '') {
                $where = ' AND host = ?';
                $bind[] = $host;
            }
            foreach (($this->fetchAll)("SELECT minute DIV ? * ? AS t, host, SUM(claimed) AS claimed, SUM(finished) AS finished,
                    SUM(released) AS released, MAX(in_progress) AS in_progress, MAX(processes) AS processes
                FROM `$table` WHERE minute >= ?$where GROUP BY t, host ORDER BY t, host", $bind) as $r) {
                $points[] = ['host' => (string) $r['host'], 'time' => (int) $r['t'], 'datetime' => gmdate('Y-m-d H:i', (int) $r['t']),
                    'claimed' => (int) $r['claimed'], 'finished' => (int) $r['finished'], 'released' => (int) $r['released'],
                    'in_progress' => (int) $r['in_progress'], 'processes' => (int) $r['processes']];
            }
        }
        return ['window' => $window, 'from' => $from, 'to' => $to, 'step' => $step, 'points' => $points];
    }

    /**
     * Each host's share of the work in the window: its totals, and its part of all finished and
     * claimed invalidations, in percent.
     *
     * @param list<array<string, mixed>> $points from load()
     * @return array<string, array<string, int|float>>
     */
    public static function shares(array $points): array
    {
        $hosts = [];
        foreach ($points as $p) {
            $h = &$hosts[$p['host']];
            $h ??= ['claimed' => 0, 'finished' => 0, 'released' => 0, 'peak_in_progress' => 0];
            foreach (['claimed', 'finished', 'released'] as $k) {
                $h[$k] += $p[$k];
            }
            $h['peak_in_progress'] = max($h['peak_in_progress'], $p['in_progress']);
            unset($h);
        }
        $finished = array_sum(array_column($hosts, 'finished'));
        $claimed = array_sum(array_column($hosts, 'claimed'));
        foreach ($hosts as &$h) {
            $h['share_finished'] = $finished ? round(100 * $h['finished'] / $finished, 1) : 0.0;
            $h['share_claimed'] = $claimed ? round(100 * $h['claimed'] / $claimed, 1) : 0.0;
        }
        ksort($hosts);
        return $hosts;
    }

    /** Matomo's evolution graph series colours, one per host in order. */
    private const COLORS = ['#5170AE', '#F3A010', '#CC3399', '#9933CC', '#80A033', '#246AD2', '#FD16EA', '#49C100'];

    /** @param list<string> $hosts @return array<string, string> host => colour */
    public static function colors(array $hosts): array
    {
        $colors = [];
        foreach (array_values($hosts) as $i => $host) {
            $colors[$host] = self::COLORS[$i % count(self::COLORS)];
        }
        return $colors;
    }

    /**
     * One chart of a metric, a line per host, drawn as SVG here (no JavaScript library, no
     * CDN): a line through every point of the window (no row is zero: nobody worked), a dot where a
     * host recorded something, with its value in a tooltip.
     *
     * @param array{from: int, to: int, step: int, points: list<array<string, mixed>>} $load
     */
    public static function svg(array $load, string $metric, string $label, array $colors): string
    {
        [$w, $h, $left, $bottom, $top, $right] = [560, 170, 40, 22, 10, 10];
        $series = [];
        $max = 0;
        foreach ($load['points'] as $p) {
            $series[$p['host']][$p['time']] = $p[$metric];
            $max = max($max, $p[$metric]);
        }
        $max = self::niceMax($max);
        $span = max(1, $load['to'] - $load['from']);
        $x = fn (int $t): float => round($left + ($w - $left - $right) * ($t - $load['from']) / $span, 1);
        $y = fn (float $v): float => round($top + ($h - $top - $bottom) * (1 - $v / $max), 1);
        $e = fn (string $s): string => htmlspecialchars($s, ENT_QUOTES);
        $out = ["<svg class=\"archiveclaim-chart\" data-metric=\"{$e($metric)}\" viewBox=\"0 0 $w $h\" width=\"$w\" height=\"$h\" role=\"img\" aria-label=\"{$e($label)}\" style=\"font:10px Verdana,sans-serif;max-width:100%;\">"];
        foreach ([0, 0.5, 1] as $f) {
            $gy = $y($max * $f);
            $out[] = "<line x1=\"$left\" x2=\"" . ($w - $right) . "\" y1=\"$gy\" y2=\"$gy\" stroke=\"#e0e0e0\"/>"
                . '<text x="' . ($left - 4) . "\" y=\"" . ($gy + 3) . "\" text-anchor=\"end\" fill=\"#666\">" . ($max * $f == (int) ($max * $f) ? (int) ($max * $f) : round($max * $f, 1)) . '</text>';
        }
        $ticks = $load['to'] - $load['from'] > 86400 ? 86400 : 4 * 3600;
        for ($t = $load['from'] - $load['from'] % $ticks + $ticks; $t < $load['to']; $t += $ticks) {
            $out[] = "<text x=\"{$x($t)}\" y=\"" . ($h - 6) . "\" text-anchor=\"middle\" fill=\"#666\">" . gmdate($ticks >= 86400 ? 'M j' : 'H:i', $t) . '</text>';
        }
        foreach ($series as $host => $values) {
            $color = $colors[$host] ?? '#5170AE';
            $line = [];
            // Zeros where nobody wrote: the line drops to 0 between busy stretches.
            $times = array_keys($values);
            $filled = [];
            foreach ($times as $t) {
                $filled[$t - $load['step']] = true;
                $filled[$t] = true;
                $filled[$t + $load['step']] = true;
            }
            ksort($filled);
            foreach (array_keys($filled) as $t) {
                if ($t >= $load['from'] && $t < $load['to']) {
                    $line[] = $x($t) . ',' . $y((float) ($values[$t] ?? 0));
                }
            }
            $out[] = "<polyline fill=\"none\" stroke=\"$color\" stroke-width=\"1.5\" points=\"" . implode(' ', $line) . '"/>';
            foreach ($values as $t => $v) {
                $out[] = "<circle class=\"archiveclaim-point\" data-host=\"{$e($host)}\" data-time=\"$t\" data-value=\"$v\" cx=\"{$x($t)}\" cy=\"{$y((float) $v)}\" r=\"2.5\" fill=\"$color\">"
                    . "<title>{$e($host)} " . gmdate('Y-m-d H:i', $t) . " UTC: $v {$e($label)}</title></circle>";
            }
        }
        $out[] = '</svg>';
        return implode('', $out);
    }

    private static function niceMax(float $max): float
    {
        if ($max <= 0) {
            return 1;
        }
        $magnitude = 10 ** floor(log10($max));
        foreach ([1, 2, 5, 10] as $m) {
            if ($max <= $m * $magnitude) {
                return $m * $magnitude;
            }
        }
        return 10 * $magnitude;
    }

    private function exists(string $name): bool
    {
        return (bool) ($this->fetchAll)('SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?',
            [$this->prefix . $name]);
    }

    private function table(string $name): string
    {
        $table = $this->prefix . $name;
        if (!preg_match('/^\w+$/', $table)) {
            throw new \InvalidArgumentException("unexpected table name '$table'");
        }
        return $table;
    }
}
