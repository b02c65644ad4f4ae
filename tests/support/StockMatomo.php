<?php
/**
 * What Matomo 5.3's Model does to claim, finish and give back invalidations, on PDO: a server
 * without the extension sharing the queue, for the mixed-fleet and chaos tests and the
 * benchmarks. (5.2, in ../shared/matomo, has neither the owner columns nor the duplicate rule;
 * the end-to-end tests run it for real.)
 */

declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PDO;

final class StockMatomo
{
    /** @param string $table quoted table name */
    public function __construct(private PDO $pdo, private string $table)
    {
    }

    /** Model::startArchive(): one compare-and-set, host and pid as PHP sees them. */
    public function claim(int $id): bool
    {
        $st = $this->pdo->prepare("UPDATE {$this->table} SET status = 1, processing_host = ?, process_id = ?, ts_started = NOW()
            WHERE idinvalidation = ? AND status = 0");
        $st->execute([gethostname() ?: null, (string) getmypid(), $id]);
        return $st->rowCount() > 0;
    }

    /** Model::deleteInvalidations(). */
    public function complete(array $ids): int
    {
        $ids = array_map('intval', $ids);
        return $ids ? (int) $this->pdo->exec("DELETE FROM {$this->table} WHERE idinvalidation IN (" . implode(',', $ids) . ')') : 0;
    }

    /**
     * Model::releaseInProgressInvalidations(), row by row in id order: a row whose archive is
     * queued again (or in progress, started after this row was invalidated) is deleted as a
     * duplicate, any other is re-queued; each statement guarded by status = 1 only.
     */
    public function release(array $ids): int
    {
        $ids = array_map('intval', $ids);
        sort($ids);
        $changed = 0;
        foreach ($ids as $id) {
            $st = $this->pdo->prepare("SELECT name, idsite, date1, date2, period, report, ts_invalidated FROM {$this->table}
                WHERE idinvalidation = ? AND status = 1");
            $st->execute([$id]);
            $r = $st->fetch(PDO::FETCH_ASSOC);
            if (!$r) {
                continue;
            }
            $st = $this->pdo->prepare("SELECT 1 FROM {$this->table} WHERE idinvalidation <> ? AND name = ? AND idsite = ?
                AND date1 = ? AND date2 = ? AND period = ? AND IFNULL(report, '') = ?
                AND (status = 0 OR (status = 1 AND ts_started > ?)) LIMIT 1");
            $st->execute([$id, $r['name'], $r['idsite'], $r['date1'], $r['date2'], $r['period'], (string) $r['report'], $r['ts_invalidated']]);
            $changed += (int) $this->pdo->exec($st->fetchColumn()
                ? "DELETE FROM {$this->table} WHERE idinvalidation = $id AND status = 1"
                : "UPDATE {$this->table} SET status = 0, processing_host = NULL, process_id = NULL, ts_started = NULL
                    WHERE idinvalidation = $id AND status = 1");
        }
        return $changed;
    }
}
