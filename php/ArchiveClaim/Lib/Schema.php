<?php
/**
 * The plugin's schema, for when the extension cannot install it itself (it is not loaded in the
 * PHP that activates the plugin, e.g. the web server's), and the uninstall, which the extension
 * does not offer. With the extension, install_schema() is used instead; these definitions must
 * stay identical to src/schema.rs (OWNER_COLUMNS, OWNER_INDEX) and src/registry.rs
 * (create_table_sql): tests/php/MatomoE2ETest.php compares what both create.
 *
 * This is the only place in PHP that writes this SQL.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim\Lib;

final class Schema
{
    /** Matomo 5.3.0's two columns, with Matomo's exact definitions. */
    public const OWNER_COLUMNS = [
        'processing_host' => 'VARCHAR(100) NULL DEFAULT NULL',
        'process_id' => 'VARCHAR(15) NULL DEFAULT NULL',
    ];

    /** Serves "status = 1 AND processing_host = ?" (each host's reap, the operator view). */
    public const OWNER_INDEX = 'index_archive_claim_status_host';

    /** Its columns: what it is looked up by, then what a reap decides on (so the reap's read is covered). */
    public const OWNER_INDEX_COLUMNS = ['status', 'processing_host', 'process_id', 'ts_started', 'idsite', 'date1', 'date2', 'period'];

    public const REGISTRY = 'archive_claim_process';

    /** Per host and minute: claimed, finished, released, in progress (src/load.rs create_table_sql; 0.4.0). */
    public const LOAD = 'archive_claim_load';

    /** How long each finished archive took, for "long-running" (src/load.rs create_duration_table_sql; 0.4.0). */
    public const DURATION = 'archive_claim_duration';

    /** What each heartbeat thread did (src/registry.rs COUNTER_COLUMNS), added in 0.3.0. */
    public const COUNTER_COLUMNS = [
        'beats' => 'BIGINT UNSIGNED NULL',
        'reap_runs' => 'BIGINT UNSIGNED NULL',
        'released' => 'BIGINT UNSIGNED NULL',
        'errors' => 'BIGINT UNSIGNED NULL',
        'last_error' => 'VARCHAR(255) NULL',
    ];

    /** The lease each process keeps (src/registry.rs LEASE_COLUMNS): a reaper with a shorter one must not read its beats' gaps as silence. */
    public const LEASE_COLUMNS = [
        'lease_seconds' => 'DOUBLE NULL',
    ];

    /**
     * The heartbeat's version, which watchers compare instead of reading any clock, and the fence
     * a release writes so that a heartbeat landing meanwhile on any cluster node aborts it
     * (src/registry.rs WATCH_COLUMNS), added in 0.4.0.
     */
    public const WATCH_COLUMNS = [
        'heartbeat_version' => 'BIGINT UNSIGNED NOT NULL DEFAULT 0',
        'fence_count' => 'BIGINT UNSIGNED NOT NULL DEFAULT 0',
    ];

    /**
     * @param \Closure(string): list<string> $column runs a query, returns its first column
     * @param \Closure(string): void $execute runs a statement
     */
    public function __construct(private \Closure $column, private \Closure $execute, private string $prefix)
    {
    }

    /** Through Matomo's own connection (inside a Matomo process). */
    public static function forMatomo(): self
    {
        return new self(
            fn (string $sql): array => array_map('current', \Piwik\Db::fetchAll($sql)),
            function (string $sql): void {
                \Piwik\Db::exec($sql);
            },
            (string) \Piwik\Config::getInstance()->database['tables_prefix'],
        );
    }

    /**
     * Adds what is missing; idempotent; never drops or rewrites anything of Matomo's (it replaces
     * only its own index of an earlier version by the current one).
     *
     * @return list<string> what it changed, worded as install_schema() words it
     */
    public function install(bool $index = true): array
    {
        $table = $this->prefix . 'archive_invalidations';
        $has = array_map('strtolower', $this->names('COLUMN_NAME', 'COLUMNS', $table));
        $clauses = $changes = [];
        foreach (self::OWNER_COLUMNS as $name => $definition) {
            if (!in_array($name, $has, true)) {
                $clauses[] = "ADD COLUMN `$name` $definition";
                $changes[] = "added column $name $definition";
            }
        }
        if ($index) {
            $add = 'ADD INDEX `' . self::OWNER_INDEX . '` (`' . implode('`, `', self::OWNER_INDEX_COLUMNS) . '`)';
            $listed = implode(', ', self::OWNER_INDEX_COLUMNS);
            $have = array_map('strtolower', ($this->column)("SELECT COLUMN_NAME FROM information_schema.STATISTICS
                WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '$table' AND INDEX_NAME = '" . self::OWNER_INDEX . "' ORDER BY SEQ_IN_INDEX"));
            if (!$have) {
                $clauses[] = $add;
                $changes[] = 'added index ' . self::OWNER_INDEX . " ($listed)";
            } elseif ($have !== self::OWNER_INDEX_COLUMNS) {
                // An earlier version's (status, processing_host), replaced in the same ALTER.
                $clauses[] = 'DROP INDEX `' . self::OWNER_INDEX . "`, $add";
                $changes[] = 'widened index ' . self::OWNER_INDEX . " to ($listed)";
            }
        }
        if ($clauses) {
            ($this->execute)("ALTER TABLE `$table` " . implode(', ', $clauses));
        }
        $registry = $this->prefix . self::REGISTRY;
        if (!$this->names('TABLE_NAME', 'TABLES', $registry)) {
            ($this->execute)($this->registrySql());
            $changes[] = "created table $registry (the process registry)";
        } elseif (!in_array('start_ticks', array_map('strtolower', $this->names('COLUMN_NAME', 'COLUMNS', $registry)), true)) {
            // 0.1's registry (heartbeats as DATETIME in a session's time zone) holds only live
            // processes' registrations, which they make again.
            ($this->execute)("DROP TABLE `$registry`");
            ($this->execute)($this->registrySql());
            $changes[] = "rebuilt table $registry (the process registry) with heartbeats in UTC epoch seconds";
        } else {
            $has = array_map('strtolower', $this->names('COLUMN_NAME', 'COLUMNS', $registry));
            $missing = array_diff_key(self::COUNTER_COLUMNS + self::LEASE_COLUMNS + self::WATCH_COLUMNS, array_flip($has));
            if ($missing) {
                $clauses = [];
                foreach ($missing as $name => $definition) {
                    $clauses[] = "ADD COLUMN `$name` $definition";
                }
                ($this->execute)("ALTER TABLE `$registry` " . implode(', ', $clauses));
                $changes[] = 'added columns ' . implode(', ', array_keys($missing)) . " to $registry (the heartbeat's version and fence, the lease and what each heartbeat thread did)";
            }
        }
        foreach ([self::LOAD => [$this->loadSql(), 'load per host and minute'],
            self::DURATION => [$this->durationSql(), 'how long archives took']] as $name => [$sql, $what]) {
            if (!$this->names('TABLE_NAME', 'TABLES', $this->prefix . $name)) {
                ($this->execute)($sql);
                $changes[] = 'created table ' . $this->prefix . $name . " ($what)";
            }
        }
        return $changes;
    }

    /**
     * Drops what only the plugin uses: the registry and the index. Matomo's own columns stay
     * (5.3 creates them itself, and its startArchive writes them).
     *
     * @return list<string>
     */
    public function uninstall(): array
    {
        $changes = [];
        $table = $this->prefix . 'archive_invalidations';
        if (in_array(self::OWNER_INDEX, $this->names('INDEX_NAME', 'STATISTICS', $table), true)) {
            ($this->execute)("ALTER TABLE `$table` DROP INDEX `" . self::OWNER_INDEX . '`');
            $changes[] = 'dropped index ' . self::OWNER_INDEX;
        }
        foreach ([self::REGISTRY, self::LOAD, self::DURATION] as $name) {
            $own = $this->prefix . $name;
            if ($this->names('TABLE_NAME', 'TABLES', $own)) {
                ($this->execute)("DROP TABLE `$own`");
                $changes[] = "dropped table $own";
            }
        }
        return $changes;
    }

    /** The registry as src/registry.rs create_table_sql() creates it. */
    public function registrySql(): string
    {
        return 'CREATE TABLE IF NOT EXISTS `' . $this->prefix . self::REGISTRY . '` (
          idprocess BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
          host VARCHAR(100) NULL,
          pid INT UNSIGNED NOT NULL,
          boot_id VARCHAR(64) NULL,
          pid_namespace BIGINT UNSIGNED NULL,
          start_ticks BIGINT UNSIGNED NULL,
          started_at DOUBLE NULL,
          time_zone VARCHAR(64) NULL,
          works_for INT UNSIGNED NULL,
          reaps TINYINT(1) NOT NULL DEFAULT 0,
          registered_at DOUBLE NOT NULL,
          heartbeat_at DOUBLE NOT NULL,
          beats BIGINT UNSIGNED NULL,
          reap_runs BIGINT UNSIGNED NULL,
          released BIGINT UNSIGNED NULL,
          errors BIGINT UNSIGNED NULL,
          last_error VARCHAR(255) NULL,
          lease_seconds DOUBLE NULL,
          heartbeat_version BIGINT UNSIGNED NOT NULL DEFAULT 0,
          fence_count BIGINT UNSIGNED NOT NULL DEFAULT 0,
          PRIMARY KEY (idprocess),
          INDEX index_host_pid (host, pid),
          INDEX index_heartbeat_at (heartbeat_at)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4';
    }

    /** The load history as src/load.rs create_table_sql() creates it. */
    public function loadSql(): string
    {
        return 'CREATE TABLE IF NOT EXISTS `' . $this->prefix . self::LOAD . '` (
          minute INT UNSIGNED NOT NULL,
          host VARCHAR(100) NOT NULL,
          claimed INT UNSIGNED NOT NULL DEFAULT 0,
          finished INT UNSIGNED NOT NULL DEFAULT 0,
          released INT UNSIGNED NOT NULL DEFAULT 0,
          in_progress INT UNSIGNED NOT NULL DEFAULT 0,
          processes SMALLINT UNSIGNED NOT NULL DEFAULT 0,
          PRIMARY KEY (minute, host)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4';
    }

    /** The durations as src/load.rs create_duration_table_sql() creates it. */
    public function durationSql(): string
    {
        return 'CREATE TABLE IF NOT EXISTS `' . $this->prefix . self::DURATION . '` (
          idduration BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
          idsite INT UNSIGNED NOT NULL,
          period TINYINT UNSIGNED NOT NULL,
          finished_at DOUBLE NOT NULL,
          seconds DOUBLE NOT NULL,
          host VARCHAR(100) NULL,
          PRIMARY KEY (idduration),
          INDEX index_period_site_finished (period, idsite, finished_at),
          INDEX index_finished_at (finished_at)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4';
    }

    /**
     * Whether an index of archive_invalidations starts with status (ours, or one an operator
     * made): without one, each look for orphans scans the whole table, so the extension's
     * automatic reaping looks once per lease instead of every heartbeat.
     */
    public function statusIsIndexed(): bool
    {
        $table = $this->prefix . 'archive_invalidations';
        if (!preg_match('/^\w+$/', $table)) {
            return false;
        }
        return (bool) ($this->column)("SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()
            AND TABLE_NAME = '$table' AND COLUMN_NAME = 'status' AND SEQ_IN_INDEX = 1 LIMIT 1");
    }

    /** @return list<string> names from information_schema for one table of this database */
    private function names(string $column, string $view, string $table): array
    {
        // Table names are prefix + a constant; the prefix is Matomo's (letters, digits, _).
        if (!preg_match('/^\w+$/', $table)) {
            throw new \InvalidArgumentException("unexpected table name '$table'");
        }
        return array_values(array_unique(($this->column)("SELECT $column FROM information_schema.$view
            WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '$table'")));
    }
}
