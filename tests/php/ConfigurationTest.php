<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use function Matomo\ArchiveClaim\claim_invalidation;
use function Matomo\ArchiveClaim\configure;
use function Matomo\ArchiveClaim\in_progress;

/** configure(), the php.ini fallback, and every way settings can be wrong. */
final class ConfigurationTest extends ExtensionTestCase
{
    private function url(array $overrides = []): string
    {
        $c = $overrides + $this->config;
        return sprintf('mysql://%s:%s@%s:%s/%s?tables_prefix=%s', rawurlencode($c['username']),
            rawurlencode($c['password']), $c['host'], $c['port'], $c['dbname'], $c['tables_prefix']);
    }

    public function testMatomosWholeDatabaseSectionIsAcceptedAndKeysWeReadAreStillChecked(): void
    {
        // As Matomo 5.2's global.ini.php + config.ini.php give it, with keys newer releases add.
        configure($this->config + ['type' => 'InnoDB', 'schema' => 'Mysql', 'collation' => '',
            'enable_ssl' => '0', 'ssl_ca' => '', 'ssl_no_verify' => '1', 'read_timeout' => 10,
            'enable_segment_first_table_join_prefix' => '0', 'enable_first_table_join_prefix' => '0',
            'a_key_matomo_adds_later' => ['nested' => 'value']]);
        $this->assertSame([], \Matomo\ArchiveClaim\in_progress(['idsites' => [424242]]));
        try {
            configure(['port' => 'three'] + $this->config + ['enable_segment_first_table_join_prefix' => '0']);
            $this->fail('a bad port passed');
        } catch (\ValueError $e) {
            $this->assertStringContainsString('port', $e->getMessage());
        }
    }

    public function testOurOwnUrlSettingStillNamesUnknownKeys(): void
    {
        [, $out] = $this->runPhp('try { Matomo\ArchiveClaim\in_progress(); } catch (Throwable $e) { echo get_class($e), ": ", $e->getMessage(); }',
            ['matomo_archive_claim.database' => $this->url() . '&tables_prefx=x']);
        $this->assertStringContainsString("'tables_prefx'", $out);
    }

    /** @return array<string, array{0: string}> */
    public static function unsafePrefixes(): array
    {
        return [
            'quote' => ['matomo`; DROP TABLE x; -- '],
            'dash' => ['mat-omo_'],
            'space' => ['mat omo'],
            'dot' => ['other_db.matomo_'],
            'too long' => [str_repeat('p', 41)],
        ];
    }

    /** @dataProvider unsafePrefixes */
    public function testUnsafePrefixesAreRefusedAndTheOldSettingsStay(string $prefix): void
    {
        [$id] = $this->queue([[]]);
        try {
            configure(['tables_prefix' => $prefix] + $this->config);
            $this->fail('accepted ' . $prefix);
        } catch (\ValueError $e) {
            $this->assertStringContainsString('tables_prefix', $e->getMessage());
        }
        $this->assertTrue(claim_invalidation($id), 'the previous configuration is still in force');
    }

    public function testWrongValueTypesAreTypeErrors(): void
    {
        $this->expectException(\TypeError::class);
        configure(['port' => [3306]] + $this->config);
    }

    public function testOutOfRangeNumbersAreValueErrors(): void
    {
        foreach ([['port' => 70000], ['port' => 'abc'], ['read_timeout' => 0]] as $bad) {
            try {
                configure($bad + $this->config);
                $this->fail(json_encode($bad));
            } catch (\ValueError $e) {
                $this->assertStringContainsString(array_key_first($bad), $e->getMessage());
            }
        }
    }

    public function testACipherListOpenSslCannotUseIsNamedBeforeAnythingConnects(): void
    {
        // Taken as PDO takes it; what OpenSSL makes of it is known when a connection is made.
        configure(['enable_ssl' => '1', 'ssl_cipher' => 'NO-SUCH-CIPHER'] + $this->config);
        $this->expectException(\Matomo\ArchiveClaim\ConfigurationException::class);
        $this->expectExceptionMessage("ssl_cipher 'NO-SUCH-CIPHER'");
        in_progress();
    }

    public function testTlsAskedOfAServerWithoutItSaysSo(): void
    {
        // The test server has no certificate: TLS is not offered, and nothing falls back to plain.
        configure(['enable_ssl' => '1', 'ssl_no_verify' => '1'] + $this->config);
        try {
            in_progress();
            $this->fail('connected in plain text although enable_ssl is on');
        } catch (\Matomo\ArchiveClaim\ConnectionException $e) {
            $this->assertSame(2026, $e->getCode());
            $this->assertStringContainsString('does not offer TLS', $e->getMessage());
        }
    }

    public function testCallingTheDatabaseUnconfiguredSaysHowToConfigure(): void
    {
        [$code, $out] = $this->runPhp('try { Matomo\ArchiveClaim\claim_invalidation(1); }
            catch (Matomo\ArchiveClaim\ConfigurationException $e) { echo $e->getMessage(); }');
        $this->assertSame(0, $code);
        $this->assertStringContainsString('configure()', $out);
        $this->assertStringContainsString('matomo_archive_claim.database', $out);
    }

    public function testThePhpIniSettingIsAFallback(): void
    {
        [$id] = $this->queue([[]]);
        // The child looks at the row while it holds it: its claims are given back when it ends.
        [$code, $out, $err] = $this->runPhp("var_export(Matomo\\ArchiveClaim\\claim_invalidation($id));
            echo ' ', Matomo\\ArchiveClaim\\in_progress()[0]['process_id'] === (string) getmypid() ? 'held' : 'not held';",
            ['matomo_archive_claim.database' => $this->url()]);
        $this->assertSame(0, $code, $err);
        $this->assertSame('true held', $out);
        $this->assertSame(0, (int) $this->row($id)['status'], 'released at the end of the script');
    }

    /** It holds a password: a script that could repoint it would hand the password to any server. */
    public function testNoScriptCanChangeTheDatabaseSettingWhileTheOthersStayChangeable(): void
    {
        [$code, $out, $err] = $this->runPhp('var_export([
                ini_set("matomo_archive_claim.database", "mysql://u:p@evil.invalid/m"),
                ini_get("matomo_archive_claim.database"),
                ini_set("matomo_archive_claim.lease", "30"),
                ini_get("matomo_archive_claim.lease"),
            ]);',
            ['matomo_archive_claim.database' => 'mysql://u:p@db.invalid/m']);
        $this->assertSame(0, $code, $err);
        $this->assertSame(var_export([false, 'mysql://u:p@db.invalid/m', '60', '30'], true), $out);
    }

    public function testABadPhpIniSettingIsAConfigurationErrorWithoutThePassword(): void
    {
        [, $out] = $this->runPhp('try { Matomo\ArchiveClaim\in_progress(); }
            catch (Matomo\ArchiveClaim\ConfigurationException $e) { echo get_class($e), ": ", $e->getMessage(); }',
            ['matomo_archive_claim.database' => $this->url(['tables_prefix' => 'x-y'])]);
        $this->assertStringContainsString('ConfigurationException: ', $out);
        $this->assertStringContainsString('tables_prefix', $out);
        $this->assertStringNotContainsString($this->config['password'], $out);
    }

    public function testAWrongPrefixIsASchemaExceptionNamingTheTable(): void
    {
        configure(['tables_prefix' => 'piwik_'] + $this->config);
        try {
            claim_invalidation(1);
            $this->fail('claimed in a missing table');
        } catch (\Matomo\ArchiveClaim\SchemaException $e) {
            $this->assertStringContainsString('piwik_archive_invalidations', $e->getMessage());
            $this->assertSame(0, $e->getCode());
        }
    }

    public function testASocketConnectionWorks(): void
    {
        $socket = getenv('MATOMO_ARCHIVE_CLAIM_TEST_SOCKET');
        if (!$socket) {
            $this->markTestSkipped('the test server has no local socket');
        }
        [$id] = $this->queue([[]]);
        configure(['host' => '', 'port' => '1', 'unix_socket' => $socket] + $this->config);
        $this->assertTrue(claim_invalidation($id));
        $this->assertCount(1, in_progress());
    }
}
