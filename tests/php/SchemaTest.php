<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use function Matomo\ArchiveClaim\claim_invalidation;
use function Matomo\ArchiveClaim\configure;
use function Matomo\ArchiveClaim\install_schema;

/** A table from before Matomo 5.3, brought up to date by install_schema(). */
final class SchemaTest extends ExtensionTestCase
{
    protected function createPre53Table(): bool
    {
        return true;
    }

    private function columns(string $prefix): array
    {
        $s = $this->pdo->prepare('SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT
            FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?
            ORDER BY ORDINAL_POSITION');
        $s->execute([$prefix . 'archive_invalidations']);
        return $s->fetchAll(\PDO::FETCH_ASSOC);
    }

    public function testAClaimOnAnOldTableSaysToRunInstallSchema(): void
    {
        [$id] = $this->queue([[]]);
        try {
            claim_invalidation($id);
            $this->fail('claimed without the owner columns');
        } catch (\Matomo\ArchiveClaim\SchemaException $e) {
            $this->assertStringContainsString('install_schema', $e->getMessage());
        }
        $this->assertSame(0, (int) $this->row($id)['status']);
    }

    public function testInstallSchemaAddsMatomosColumnsOnceAndSaysSo(): void
    {
        $dry = install_schema(['dry_run' => true]);
        $this->assertTrue($dry['dry_run']);
        $this->assertCount(6, $dry['changes'], 'the columns, the registry, the index (as the plugin adds them) and the two history tables');
        $this->assertCount(11, $this->columns(self::PREFIX), 'a dry run changes nothing');

        $first = install_schema();
        $this->assertSame('matomo_archive_invalidations', $first['table']);
        $this->assertSame([
            'added column processing_host VARCHAR(100) NULL DEFAULT NULL',
            'added column process_id VARCHAR(15) NULL DEFAULT NULL',
            'added index index_archive_claim_status_host (status, processing_host, process_id, ts_started, idsite, date1, date2, period)',
            'created table matomo_archive_claim_process (the process registry)',
            'created table matomo_archive_claim_load (load per host and minute)',
            'created table matomo_archive_claim_duration (how long archives took)',
        ], $first['changes']);
        $this->assertSame([], install_schema()['changes'], 'a second call changes nothing');

        // Same definitions as a table Matomo 5.3 creates from scratch.
        $this->pdo->exec(sprintf(TestDatabase::INVALIDATIONS_DDL, 'fresh_'));
        $this->assertSame($this->columns('fresh_'), $this->columns(self::PREFIX));

        [$id] = $this->queue([[]]);
        $this->assertTrue(claim_invalidation($id));
    }

    public function testTheIndexIsAddedByDefaultAsThePluginDoesAndCanBeDeclined(): void
    {
        install_schema(['index' => false]);
        $indexes = fn () => $this->pdo->query('SHOW INDEX FROM ' . $this->table())->fetchAll(\PDO::FETCH_COLUMN, 2);
        $this->assertNotContains('index_archive_claim_status_host', $indexes(), "['index' => false] declines it");
        $this->assertSame([], install_schema(['index' => false])['changes']);
        $this->assertSame(['added index index_archive_claim_status_host (status, processing_host, process_id, ts_started, idsite, date1, date2, period)'],
            install_schema()['changes']);
        $this->assertContains('index_archive_claim_status_host', $indexes());
        $this->assertSame([], install_schema(['index' => true])['changes']);
    }

    public function testTheNarrowIndexOfAnEarlierVersionIsWidenedToCoverAReapsRead(): void
    {
        install_schema(['index' => false]);
        $this->pdo->exec('ALTER TABLE ' . $this->table() . ' ADD INDEX index_archive_claim_status_host (status, processing_host)');
        $columns = fn () => array_column(array_filter($this->pdo->query('SHOW INDEX FROM ' . $this->table())->fetchAll(\PDO::FETCH_ASSOC),
            fn ($r) => $r['Key_name'] === 'index_archive_claim_status_host'), 'Column_name');
        $this->assertSame(['widened index index_archive_claim_status_host to (status, processing_host, process_id, ts_started, idsite, date1, date2, period)'],
            install_schema(['index' => true])['changes']);
        $this->assertSame(['status', 'processing_host', 'process_id', 'ts_started', 'idsite', 'date1', 'date2', 'period'], $columns());
        $this->assertSame([], install_schema(['index' => true])['changes']);
        // The plugin's own SQL (for a PHP without the extension) words and does the same.
        $this->pdo->exec('ALTER TABLE ' . $this->table() . ' DROP INDEX index_archive_claim_status_host, ADD INDEX index_archive_claim_status_host (status, processing_host)');
        require_once __DIR__ . '/../../php/ArchiveClaim/Lib/Schema.php';
        $pdo = $this->pdo;
        $schema = new \Piwik\Plugins\ArchiveClaim\Lib\Schema(fn (string $sql): array => $pdo->query($sql)->fetchAll(\PDO::FETCH_COLUMN),
            function (string $sql) use ($pdo): void {
                $pdo->exec($sql);
            }, self::PREFIX);
        $this->assertSame(['widened index index_archive_claim_status_host to (status, processing_host, process_id, ts_started, idsite, date1, date2, period)'],
            $schema->install());
        $this->assertSame(['status', 'processing_host', 'process_id', 'ts_started', 'idsite', 'date1', 'date2', 'period'], $columns());
    }

    public function testAMissingTableIsASchemaExceptionNamingIt(): void
    {
        configure(['tables_prefix' => 'nosuch_'] + $this->config);
        $this->expectException(\Matomo\ArchiveClaim\SchemaException::class);
        $this->expectExceptionMessage('nosuch_archive_invalidations');
        install_schema();
    }

    public function testUnknownOptionsAreRefused(): void
    {
        $this->expectException(\ValueError::class);
        $this->expectExceptionMessage("'indexes'");
        install_schema(['indexes' => true]);
    }
}
