<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use function Matomo\ArchiveClaim\claim_invalidation;
use function Matomo\ArchiveClaim\complete_invalidations;
use function Matomo\ArchiveClaim\release_invalidations;

/** Matomo's release semantics (duplicates deleted, others re-queued), fenced on the owner. */
final class ReleaseCompleteTest extends ExtensionTestCase
{
    private function claimAll(array $ids): void
    {
        foreach ($ids as $id) {
            $this->assertTrue(claim_invalidation($id));
        }
    }

    public function testReleaseRequeuesOurRowsAndClearsTheOwner(): void
    {
        $ids = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $this->claimAll($ids);

        $this->assertSame(2, release_invalidations($ids));
        foreach ($ids as $id) {
            $row = $this->row($id);
            $this->assertSame(0, (int) $row['status']);
            $this->assertNull($row['processing_host']);
            $this->assertNull($row['process_id']);
            $this->assertNull($row['ts_started']);
        }
        $this->assertSame(0, release_invalidations($ids), 'nothing left to release');
    }

    public function testIdsMayComeAsPdoStrings(): void
    {
        [$id] = $this->queue([[]]);
        $this->claimAll([$id]);
        $this->assertSame(1, release_invalidations([(string) $id]));
    }

    public function testARowWhoseArchiveIsAlsoQueuedIsDeleted(): void
    {
        [$ours, $queued] = $this->queue([['idsite' => 3], ['idsite' => 3]]);
        $this->claimAll([$ours]);

        $this->assertSame(1, release_invalidations([$ours]));
        $this->assertNull($this->row($ours), 'deleted as a duplicate');
        $this->assertSame(0, (int) $this->row($queued)['status']);
    }

    public function testARowWhoseArchiveWasStartedAfterItsInvalidationIsDeleted(): void
    {
        [$ours, $theirs] = $this->queue([
            ['idsite' => 4, 'ts_invalidated' => '2026-11-28 10:00:00'],
            ['idsite' => 4],
        ]);
        $this->claimAll([$ours]);
        $this->claimAs($theirs, 'other', '77', "'2026-11-28 11:00:00'");

        $this->assertSame(1, release_invalidations([$ours]));
        $this->assertNull($this->row($ours));
    }

    public function testARowWhoseArchiveWasStartedBeforeItsInvalidationIsRequeued(): void
    {
        [$ours, $theirs] = $this->queue([
            ['idsite' => 4, 'ts_invalidated' => '2026-11-28 12:00:00'],
            ['idsite' => 4],
        ]);
        $this->claimAll([$ours]);
        $this->claimAs($theirs, 'other', '77', "'2026-11-28 11:00:00'");

        $this->assertSame(1, release_invalidations([$ours]));
        $this->assertSame(0, (int) $this->row($ours)['status']);
    }

    public function testDuplicatesAreOnlyTheSameArchive(): void
    {
        $ours = $this->queue([['idsite' => 5, 'report' => 'Goals']])[0];
        $this->queue([
            ['idsite' => 5, 'report' => 'Actions'],      // another report
            ['idsite' => 6, 'report' => 'Goals'],        // another site
            ['idsite' => 5, 'report' => 'Goals', 'period' => 2, 'date2' => '2026-11-29'],
            ['idsite' => 5, 'report' => 'Goals', 'name' => 'done.Goals'],
        ]);
        $this->claimAll([$ours]);
        $this->assertSame(1, release_invalidations([$ours]));
        $this->assertSame(0, (int) $this->row($ours)['status'], 're-queued: nothing else covers it');

        // NULL and '' reports are the same report to Matomo.
        [$a, $b] = $this->queue([['idsite' => 9, 'report' => null], ['idsite' => 9, 'report' => '']]);
        $this->claimAll([$a]);
        $this->assertSame(1, release_invalidations([$a]));
        $this->assertNull($this->row($a));
        $this->assertNotNull($this->row($b));
    }

    public function testRowsAreReleasedInIdOrderEachSeeingTheRowsAfterIt(): void
    {
        // Two of our rows for one archive. In id order, as Matomo's loop goes: the first is a
        // duplicate of the second (in progress, started after the first was invalidated) and is
        // deleted; the second then has no twin left and goes back to the queue.
        $ids = $this->queue([['idsite' => 8], ['idsite' => 8]]);
        $this->claimAll($ids);
        $this->assertSame(2, release_invalidations(array_reverse($ids)));
        $this->assertNull($this->row($ids[0]));
        $this->assertSame(0, (int) $this->row($ids[1])['status']);
    }

    public function testReleaseAndCompleteTouchOnlyOurOwnClaims(): void
    {
        $ids = $this->queue([['idsite' => 1], ['idsite' => 2], ['idsite' => 3], ['idsite' => 4]]);
        [$mine, $otherHost, $otherPid, $queued] = $ids;
        $this->claimAll([$mine]);
        $this->claimAs($otherHost, 'another-server', (string) getmypid());
        $this->claimAs($otherPid, gethostname(), (string) (getmypid() + 1));
        $untouched = [$this->row($otherHost), $this->row($otherPid), $this->row($queued)];

        $this->assertSame(1, release_invalidations($ids));
        $this->assertSame($untouched, [$this->row($otherHost), $this->row($otherPid), $this->row($queued)]);

        $this->claimAll([$mine]);
        $this->assertSame(1, complete_invalidations($ids));
        $this->assertNull($this->row($mine));
        $this->assertSame($untouched, [$this->row($otherHost), $this->row($otherPid), $this->row($queued)]);
        $this->assertSame(0, complete_invalidations($ids));
    }

    public function testAStaleOwnerCannotUndoANewerClaim(): void
    {
        // We claimed the row, someone released it behind our back and another process
        // re-claimed it: our late release/complete must not touch their claim.
        [$id] = $this->queue([[]]);
        $this->claimAll([$id]);
        $this->claimAs($id, gethostname(), '999999');
        $theirs = $this->row($id);

        $this->assertSame(0, release_invalidations([$id]));
        $this->assertSame(0, complete_invalidations([$id]));
        $this->assertSame($theirs, $this->row($id));
    }

    public function testEmptyListsChangeNothing(): void
    {
        $this->assertSame(0, release_invalidations([]));
        $this->assertSame(0, complete_invalidations([]));
    }

    /** @return array<string, array{0: array}> */
    public static function badIdLists(): array
    {
        return [
            'zero' => [[0]],
            'negative' => [[-4]],
            'word' => [['abc']],
            'float' => [[1.5]],
            'null' => [[null]],
            'nested' => [[[1]]],
            'sign' => [['+3']],
            'valid then invalid' => [[1, 'x']],
        ];
    }

    /** @dataProvider badIdLists */
    public function testBadIdsAreRefusedAndChangeNothing(array $ids): void
    {
        $claimed = $this->queue([[], []]);
        $this->claimAll($claimed);
        $checksum = $this->tableChecksum();
        foreach (['Matomo\ArchiveClaim\release_invalidations', 'Matomo\ArchiveClaim\complete_invalidations'] as $fn) {
            try {
                $fn($ids);
                $this->fail("$fn accepted " . json_encode($ids));
            } catch (\ValueError $e) {
                $this->assertStringContainsString('positive integers', $e->getMessage());
            }
        }
        $this->assertSame($checksum, $this->tableChecksum());
    }
}
