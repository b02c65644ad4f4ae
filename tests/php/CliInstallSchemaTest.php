<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

/** install-schema needs a table from before Matomo 5.3. */
final class CliInstallSchemaTest extends ExtensionTestCase
{
    protected function createPre53Table(): bool
    {
        return true;
    }

    public function testInstallSchemaSaysWhatItChangedOnce(): void
    {
        $c = $this->config;
        $args = ['--host=' . $c['host'], '--port=' . $c['port'], '--user=' . $c['username'], '--password=' . $c['password'],
            '--dbname=' . $c['dbname'], '--prefix=' . $c['tables_prefix']];
        $run = function (array $extra) use ($args): array {
            $proc = proc_open(TestDatabase::php(array_merge([__DIR__ . '/../../php/bin/archive-claim', 'install-schema'], $args, $extra)),
                [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
            $out = stream_get_contents($pipes[1]);
            return [proc_close($proc), $out];
        };
        [$code, $out] = $run(['--dry-run']);
        $this->assertSame(0, $code);
        $this->assertStringContainsString('Would change matomo_archive_invalidations', $out);
        [$code, $out] = $run(['--no-index']);
        $this->assertSame(0, $code);
        $this->assertStringContainsString('added column processing_host VARCHAR(100) NULL DEFAULT NULL', $out);
        $this->assertStringNotContainsString('index_archive_claim_status_host', $out, '--no-index declines the index');
        [$code, $out] = $run([]);
        $this->assertSame(0, $code);
        $this->assertStringContainsString('added index index_archive_claim_status_host', $out, 'added by default, as the plugin does');
        [, $out] = $run([]);
        $this->assertStringContainsString('already has everything; nothing changed', $out);
        [$code] = $run(['--index', '--no-index']);
        $this->assertNotSame(0, $code, 'contradicting flags are refused');
    }
}
