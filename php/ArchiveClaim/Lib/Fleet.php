<?php
/**
 * The archiving fleet as the operator's page and the System Check see it: every registered
 * process by host (with what its heartbeat thread did), every in-progress invalidation with the
 * extension's verdict, what was released lately, the queue by site, and the clock offset
 * between this PHP and the database. One source for the page, the check and
 * `archiveclaim:status` (which renders rows() as text through StatusView).
 *
 * Read-only. Without the extension (or with settings it refuses) the registry, the queue and
 * the clock are still read through Matomo's connection; only the verdicts are missing, and
 * `extension` says why.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim\Lib;

use Matomo\ArchiveClaim as Native;

final class Fleet
{
    /** The lease archivers use when php.ini does not say (src/settings.rs DEFAULT_LEASE). */
    public const DEFAULT_LEASE = 60;

    /**
     * @param \Closure(string): list<array<string, mixed>> $fetchAll runs a query, returns its rows
     */
    public function __construct(private \Closure $fetchAll, private string $prefix, private ?array $database = null)
    {
    }

    public static function forMatomo(): self
    {
        $database = \Piwik\Config::getInstance()->database;
        return new self(fn (string $sql): array => \Piwik\Db::fetchAll($sql), (string) $database['tables_prefix'], $database);
    }

    /**
     * In-progress invalidations with the extension's verdicts (the extension must be loaded
     * and configured).
     *
     * @param array<string, mixed> $filters in_progress() filters
     * @return list<array<string, mixed>>
     */
    public static function rows(array $filters = []): array
    {
        // Paged: the extension never holds more than a page of a large in-progress set.
        $rows = StatusView::all($filters);
        try {
            return History::forMatomo()->markLongRunning($rows);
        } catch (\Throwable $e) {
            // No history to judge by (a database that refuses the read): nothing is long-running.
            return array_map(fn ($r) => $r + ['usual_seconds' => null, 'usual_basis' => null, 'long_running' => false], $rows);
        }
    }

    /** @param list<array<string, mixed>> $rows from rows() */
    public static function longRunningCount(array $rows): int
    {
        return count(array_filter($rows, fn ($r) => !empty($r['long_running'])));
    }

    /**
     * Whether the extension can judge here: ['state' => ok|missing|unconfigured, 'message' => string].
     */
    public function extension(): array
    {
        if (!Extension::loaded()) {
            return ['state' => 'missing', 'message' => Extension::missingMessage()];
        }
        try {
            Native\configure($this->database ?? []);
        } catch (Native\Exception | \ValueError | \TypeError $e) {
            return ['state' => 'unconfigured', 'message' => 'The matomo_archive_claim extension is loaded (version '
                . phpversion(Extension::NAME) . ') but cannot use Matomo\'s [database] settings: ' . $e->getMessage()];
        }
        return ['state' => 'ok', 'message' => 'The matomo_archive_claim extension ' . phpversion(Extension::NAME) . ' is loaded and configured.'];
    }

    /** The lease in this PHP's php.ini (the fleet's archivers are expected to share it). */
    public static function lease(): int
    {
        $lease = (int) ini_get('matomo_archive_claim.lease');
        return $lease > 0 ? $lease : self::DEFAULT_LEASE;
    }

    /** @return array{php: float, database: float, offset: float} database clock minus this server's, in seconds */
    public function clock(): array
    {
        $before = microtime(true);
        $db = (float) current(($this->fetchAll)('SELECT TIMESTAMPDIFF(MICROSECOND, \'1970-01-01\', UTC_TIMESTAMP(6)) / 1e6 AS now')[0]);
        $php = ($before + microtime(true)) / 2;
        return ['php' => $php, 'database' => $db, 'offset' => $db - $php];
    }

    /**
     * Every registration, with its heartbeat's age on the database clock; null when the
     * registry does not exist (the plugin was never activated, or nobody registered).
     *
     * @return list<array<string, mixed>>|null
     */
    public function processes(): ?array
    {
        $table = $this->table(Schema::REGISTRY);
        if (!($this->fetchAll)("SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '$table'")) {
            return null;
        }
        $rows = ($this->fetchAll)("SELECT p.*, (TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)) / 1e6) - p.heartbeat_at AS heartbeat_age
            FROM `$table` p ORDER BY p.host, p.pid, p.idprocess");
        foreach ($rows as &$r) {
            $r['heartbeat_age'] = (float) $r['heartbeat_age'];
            $r['pid'] = (int) $r['pid'];
        }
        return $rows;
    }

    /** @return array<int, array{queued: int, in_progress: int}> by idsite */
    public function queueBySite(): array
    {
        $table = $this->table('archive_invalidations');
        $sites = [];
        foreach (($this->fetchAll)("SELECT idsite, status, COUNT(*) AS n FROM `$table` WHERE status IN (0, 1) GROUP BY idsite, status ORDER BY idsite") as $r) {
            $sites[(int) $r['idsite']] ??= ['queued' => 0, 'in_progress' => 0];
            $sites[(int) $r['idsite']][(int) $r['status'] === 1 ? 'in_progress' : 'queued'] = (int) $r['n'];
        }
        return $sites;
    }

    /**
     * Hosts whose every registration's heartbeat is older than the lease: gone, or cut off
     * from the database.
     *
     * @param list<array<string, mixed>> $processes
     * @return array<string, float> host => age of its newest heartbeat
     */
    public static function staleHosts(array $processes, int $lease): array
    {
        $newest = [];
        foreach ($processes as $p) {
            $host = $p['host'] ?? '(unknown host)';
            $newest[$host] = min($newest[$host] ?? INF, $p['heartbeat_age']);
        }
        return array_filter($newest, fn (float $age) => $age > $lease);
    }

    /**
     * Everything the page shows.
     *
     * @return array<string, mixed>
     */
    public function snapshot(string $window = '24h'): array
    {
        $extension = $this->extension();
        $lease = self::lease();
        $processes = $this->processes();
        $rows = null;
        if ($extension['state'] === 'ok') {
            try {
                $rows = self::rows();
            } catch (Native\Exception $e) {
                $extension = ['state' => 'error', 'message' => 'The matomo_archive_claim extension cannot read the invalidations: ' . $e->getMessage()];
            }
        }
        if ($rows !== null) {
            // This web process's own thread (rare: only if it claimed) has news too.
            ReleaseLog::rememberBackground();
        }
        $stale = self::staleHosts($processes ?? [], $lease);

        $hosts = [];
        foreach ($processes ?? [] as $p) {
            $host = $p['host'] ?? '(unknown host)';
            $hosts[$host] ??= self::host();
            $p['rows'] = [];
            $p['fresh'] = $p['heartbeat_age'] <= $lease;
            $hosts[$host]['processes'][$p['pid'] . '/' . $p['idprocess']] = $p;
        }
        foreach ($rows ?? [] as $r) {
            $host = $r['processing_host'] ?? '(unknown host)';
            $hosts[$host] ??= self::host();
            $hosts[$host]['counts']['in_progress']++;
            $hosts[$host]['counts'][$r['verdict']]++;
            $hosts[$host]['counts']['long_running'] += empty($r['long_running']) ? 0 : 1;
            $r['usual'] = $r['usual_seconds'] === null ? null : StatusView::age((int) ceil($r['usual_seconds']));
            $r['period_name'] = StatusView::period((int) $r['period']);
            $r['age'] = StatusView::age((int) $r['age_seconds']);
            $owner = null;
            foreach ($hosts[$host]['processes'] as $key => $p) {
                if ((string) $p['pid'] === (string) $r['process_id']) {
                    $owner = $key; // the newest registration of that pid comes last
                }
            }
            if ($owner !== null) {
                $hosts[$host]['processes'][$owner]['rows'][] = $r;
            } else {
                $hosts[$host]['unregistered'][] = $r;
            }
        }
        foreach ($hosts as $name => &$h) {
            $h['processes'] = array_values($h['processes']);
            $h['stale'] = isset($stale[$name]);
            $h['newest_heartbeat_age'] = $h['processes'] ? min(array_column($h['processes'], 'heartbeat_age')) : null;
        }
        ksort($hosts);

        $history = History::forMatomo();
        $load = $history->load($window);
        $shares = History::shares($load['points']);
        $colors = History::colors(array_unique(array_merge(array_keys($shares), array_keys($hosts))));
        $charts = [];
        foreach (['claimed' => 'claimed', 'finished' => 'finished', 'released' => 'released', 'in_progress' => 'in progress'] as $metric => $label) {
            $charts[$metric] = ['label' => $label, 'svg' => History::svg($load, $metric, $label, $colors)];
        }

        return [
            'window' => $window,
            'load' => $load,
            'shares' => $shares,
            'colors' => $colors,
            'charts' => $charts,
            'threshold' => History::threshold(),
            'database_now' => $this->clock()['database'],
            'extension' => $extension,
            'lease' => $lease,
            'registry' => $processes !== null,
            'hosts' => $hosts,
            'counts' => [
                'processes' => count($processes ?? []),
                'in_progress' => $rows === null ? null : count($rows),
                'dead' => $rows === null ? null : StatusView::deadCount($rows),
                'long_running' => $rows === null ? null : self::longRunningCount($rows),
            ],
            'recent' => array_map(function (array $r): array {
                $r['period_name'] = StatusView::period((int) ($r['period'] ?? 0));
                $r['when'] = gmdate('Y-m-d H:i:s', (int) $r['at']) . ' UTC';
                return $r;
            }, ReleaseLog::recent()),
            'queue' => $this->queueBySite(),
            'clock' => $this->clock(),
            'thread_log' => Extension::loaded() ? (string) ini_get('matomo_archive_claim.log') : null,
        ];
    }

    /**
     * What the page shows of who does what, one flat row per claim in progress (with its
     * owner's registration) and per registered process that holds none, so every format of
     * Matomo's API (CSV and TSV included) carries it.
     *
     * @param array<string, mixed> $snapshot from snapshot()
     * @return list<array<string, scalar|null>>
     */
    public static function flatFleet(array $snapshot): array
    {
        $out = [];
        $claim = function (string $host, ?array $p, array $r) use ($snapshot): array {
            return ['kind' => 'claim', 'host' => $host, 'pid' => $p['pid'] ?? (is_numeric($r['process_id'] ?? null) ? (int) $r['process_id'] : null),
                'registered' => $p ? 1 : 0, 'heartbeat_age' => $p ? round($p['heartbeat_age'], 1) : null, 'host_stale' => $snapshot['hosts'][$host]['stale'] ? 1 : 0,
                'idinvalidation' => (int) $r['idinvalidation'], 'idsite' => (int) $r['idsite'], 'period' => $r['period_name'],
                'date1' => $r['date1'], 'date2' => $r['date2'], 'name' => $r['name'], 'report' => $r['report'] ?? null,
                'ts_started' => $r['ts_started'] ?? null, 'age_seconds' => (int) $r['age_seconds'], 'verdict' => $r['verdict'], 'reason' => $r['reason'],
                'usual_seconds' => $r['usual_seconds'] === null ? null : round($r['usual_seconds'], 1), 'usual_basis' => $r['usual_basis'],
                'long_running' => empty($r['long_running']) ? 0 : 1];
        };
        foreach ($snapshot['hosts'] as $host => $h) {
            $host = (string) $host;
            foreach ($h['processes'] as $p) {
                foreach ($p['rows'] as $r) {
                    $out[] = $claim($host, $p, $r);
                }
                if (!$p['rows']) {
                    $out[] = ['kind' => 'idle_process', 'host' => $host, 'pid' => $p['pid'], 'registered' => 1,
                        'heartbeat_age' => round($p['heartbeat_age'], 1), 'host_stale' => $h['stale'] ? 1 : 0] + array_fill_keys(['idinvalidation',
                        'idsite', 'period', 'date1', 'date2', 'name', 'report', 'ts_started', 'age_seconds', 'verdict', 'reason',
                        'usual_seconds', 'usual_basis', 'long_running'], null);
                }
            }
            foreach ($h['unregistered'] as $r) {
                $out[] = $claim($host, null, $r);
            }
        }
        return $out;
    }

    private static function host(): array
    {
        return ['processes' => [], 'unregistered' => [], 'counts' => ['in_progress' => 0, 'alive' => 0, 'dead' => 0, 'unknown' => 0, 'long_running' => 0]];
    }

    private function table(string $name): string
    {
        $table = $this->prefix . $name;
        // Matomo's prefix: letters, digits, underscore.
        if (!preg_match('/^\w+$/', $table)) {
            throw new \InvalidArgumentException("unexpected table name '$table'");
        }
        return $table;
    }
}
