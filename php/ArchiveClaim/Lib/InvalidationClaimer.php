<?php
/**
 * What Matomo's archiver calls to claim, finish and give back invalidations.
 *
 * With the extension loaded, claims record the real host and pid natively and every release or
 * completion is fenced on the owner. Without it, the same calls issue Matomo's own statements
 * through the connection Matomo gives us, so a server without the extension keeps working on
 * the shared queue exactly as stock Matomo does.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim\Lib;

use Matomo\ArchiveClaim as Native;

final class InvalidationClaimer
{
    /**
     * @param \Closure(string, array): int   $execute runs one statement with bound values, returns the rows it changed
     * @param \Closure(string, array): array $fetch   runs one query, returns its rows
     */
    public function __construct(
        private \Closure $execute,
        private \Closure $fetch,
        private string $table,
        private bool $useExtension,
    ) {
    }

    /** Through Matomo's own Db layer (inside a Matomo process). */
    public static function forMatomo(): self
    {
        return new self(
            fn (string $sql, array $bind): int => \Piwik\Db::query($sql, $bind)->rowCount(),
            fn (string $sql, array $bind): array => \Piwik\Db::fetchAll($sql, $bind),
            \Piwik\Common::prefixTable('archive_invalidations'),
            Extension::loaded(),
        );
    }

    /** Through a PDO connection (tools, tests); $useExtension null means "if loaded". */
    public static function forPdo(\PDO $pdo, string $tablesPrefix, ?bool $useExtension = null): self
    {
        return new self(
            function (string $sql, array $bind) use ($pdo): int {
                $st = $pdo->prepare($sql);
                $st->execute($bind);
                return $st->rowCount();
            },
            function (string $sql, array $bind) use ($pdo): array {
                $st = $pdo->prepare($sql);
                $st->execute($bind);
                return $st->fetchAll(\PDO::FETCH_ASSOC);
            },
            $tablesPrefix . 'archive_invalidations',
            $useExtension ?? Extension::loaded(),
        );
    }

    public function usesExtension(): bool
    {
        return $this->useExtension;
    }

    /** @param array{idinvalidation: int|string} $invalidation a row as Matomo fetched it */
    public function claim(array $invalidation): bool
    {
        $id = (int) $invalidation['idinvalidation'];
        if ($this->useExtension) {
            return Native\claim_invalidation($id);
        }
        return ($this->execute)(
            "UPDATE `{$this->table}` SET status = ?, processing_host = ?, process_id = ?, ts_started = NOW()
              WHERE idinvalidation = ? AND status = ?",
            [1, gethostname() ?: null, (string) getmypid(), $id, 0]
        ) > 0;
    }

    /** Deletes finished invalidations (ours only, with the extension). */
    public function complete(array $ids): int
    {
        $ids = self::ids($ids);
        if ($ids === []) {
            return 0;
        }
        if ($this->useExtension) {
            return Native\complete_invalidations($ids);
        }
        return ($this->execute)("DELETE FROM `{$this->table}` WHERE idinvalidation IN (" . implode(', ', $ids) . ')', []);
    }

    /** Gives claims back: a duplicate is deleted, anything else re-queued, in id order. */
    public function release(array $ids): int
    {
        $ids = self::ids($ids);
        if ($ids === []) {
            return 0;
        }
        if ($this->useExtension) {
            return Native\release_invalidations($ids);
        }
        sort($ids);
        $changed = 0;
        foreach ($ids as $id) {
            $rows = ($this->fetch)("SELECT name, idsite, date1, date2, period, report, ts_invalidated
                FROM `{$this->table}` WHERE idinvalidation = ? AND status = 1", [$id]);
            if (!$rows) {
                continue;
            }
            $r = $rows[0];
            $duplicate = ($this->fetch)("SELECT 1 FROM `{$this->table}` WHERE idinvalidation <> ? AND name = ?
                AND idsite = ? AND date1 = ? AND date2 = ? AND period = ? AND IFNULL(report, '') = ?
                AND (status = 0 OR (status = 1 AND ts_started > ?)) LIMIT 1",
                [$id, $r['name'], $r['idsite'], $r['date1'], $r['date2'], $r['period'], (string) $r['report'], $r['ts_invalidated']]);
            $changed += $duplicate
                ? ($this->execute)("DELETE FROM `{$this->table}` WHERE idinvalidation = ? AND status = 1", [$id])
                : ($this->execute)("UPDATE `{$this->table}` SET status = 0, processing_host = NULL, process_id = NULL,
                    ts_started = NULL WHERE idinvalidation = ? AND status = 1", [$id]);
        }
        return $changed;
    }

    /** @return int[] */
    private static function ids(array $ids): array
    {
        return array_values(array_unique(array_map('intval', $ids)));
    }
}
